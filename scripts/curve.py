"""Summarise a run's learning curve from RUN_DIR/metrics.jsonl.

    python scripts/curve.py RUN_DIR [--windows 10]

Prints the mean reward of the first and last 5 rounds, their difference, and the mean reward in equal
windows over the run, plus the median round time and throughputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--windows", type=int, default=10)
    args = ap.parse_args()
    rows = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        raise SystemExit(f"{args.run_dir}/metrics.jsonl has no rounds yet")
    r = [x["reward_mean"] for x in rows]
    first, last = statistics.fmean(r[:5]), statistics.fmean(r[-5:])
    print(f"rounds {rows[0]['round']}..{rows[-1]['round']}  first5 {first:.3f}  last5 {last:.3f}  "
          f"gain {last - first:+.3f}")
    k = max(1, len(r) // args.windows)
    print("window means:")
    for i in range(0, len(r), k):
        w = rows[i:i + k]
        print(f"  rounds {w[0]['round']:>6}-{w[-1]['round']:<6} reward {statistics.fmean(x['reward_mean'] for x in w):.3f}")
    print(f"median round {statistics.median(x['round_s'] for x in rows):.3f} s | gen "
          f"{statistics.median(x['gen_tokens_per_s'] for x in rows):,.0f} tok/s | train "
          f"{statistics.median(x['train_tokens_per_s'] for x in rows):,.0f} tok/s")


if __name__ == "__main__":
    main()
