"""Reproduce the SAPO table (arXiv 2509.08721, Table 1) at a scale this machine allows.

    python scripts/reproduce_sapo.py --out DIR [--nodes 4] [--rounds 200] [--seeds 2]
        [--splits 8/0,6/2,4/4,2/6] [--regime default|sparse|mixed] [--external-advantages all|positive]

For every local/external split and seed, the same swarm (``--nodes`` real `sapo run` processes through a
bootstrap peer, equal rounds) is run with ``sapo.local_groups``/``sapo.external_groups`` set to the split.
Cumulative reward = the sum over nodes and rounds of each node's ``reward_mean`` (its own fresh
completions). Writes ``DIR/sapo_table.json``, ``DIR/sapo_table.md`` (mean and spread over seeds, gain over
8/0 with a 95% interval from the per-seed paired gains) and ``DIR/sapo_table.png``.

Regimes (the paper's mechanism is rare successes spreading, so the sparse ones matter):
- default: the embedded tiny model on one-digit arithmetic (local success 40-70%);
- sparse:  weaker warm starts (50 steps: sampled success 6% at the start, most local groups all-zero);
- mixed:   half the nodes weak (50 steps, 6%), half strong (400 steps, 76%): do weak nodes gain from strong ones?
Publish pacing and peer rate limits are raised so that sharing is not throttled on a fast CPU node.
The paper: 8 x Qwen2.5-0.5B, 2000 rounds: 8/0 561.79, 6/2 854.43, 4/4 1093.31 (+94%), 2/6 945.87.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

PAPER = {"8/0": 561.79, "6/2": 854.43, "4/4": 1093.31, "2/6": 945.87}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def regime_groups(regime: str, nodes: int) -> list[dict]:
    if regime == "default":
        return [{"name": "node", "count": nodes}]
    if regime == "sparse":
        return [{"name": "weak", "count": nodes, "set": ["model.warm_start_steps=50"]}]
    if regime == "mixed":
        weak = nodes // 2
        return [{"name": "weak", "count": weak, "set": ["model.warm_start_steps=50"]},
                {"name": "strong", "count": nodes - weak, "set": ["model.warm_start_steps=400"]}]
    raise SystemExit(f"unknown regime {regime!r}: use default, sparse or mixed")


def run_one(out: Path, split: str, seed: int, args) -> dict:
    from swarm.sim.runner import Simulation
    from swarm.sim.scenario import Scenario

    local, external = (int(x) for x in split.split("/"))
    groups = regime_groups(args.regime, args.nodes)
    for k, g in enumerate(groups):
        g["seed"] = 1000 * seed + 100 * k
    sc = Scenario.model_validate({
        "name": f"sapo-{split.replace('/', '-')}-s{seed}",
        "rounds": args.rounds,
        "bootstrap": True,
        "set": ["threads=1", "checkpoint.every_rounds=100000", f"sapo.local_groups={local}",
                f"sapo.external_groups={external}", "swarm.publish_per_minute=60000", "swarm.publish_burst=2000",
                "swarm.admission.rate_per_peer=120000", "swarm.admission.burst_per_peer=4000",
                f"sapo.external_advantages={args.external_advantages}", "metrics.log_every=1000"],
        "groups": groups,
        "timeout_s": args.timeout,
    })
    if external == 0:  # no sharing at all (the paper's 8/0); also spares the CPU the transport's work
        sc.set.append("swarm.enabled=false")
    report = Simulation(sc, out, live=False).run()
    rows = report["nodes"]
    return {
        "split": split, "seed": seed,
        "cumulative_reward": sum(n["cumulative_reward"] for n in rows),
        "per_group": {g["name"]: sum(n["cumulative_reward"] for n in rows if n["group"] == g["name"])
                      for g in groups},
        "external_groups_used": sum(n["external_groups_used"] for n in rows),
        "rounds": [n["rounds"] for n in rows],
        "crashed": report["totals"]["crashed_nodes"],
        "wall_s": report["wall_s"],
        "dir": str(out),
    }


def summarise(results: list[dict], splits: list[str]) -> dict:
    table = {}
    base = {r["seed"]: r["cumulative_reward"] for r in results if r["split"] == splits[0]}
    for split in splits:
        rs = [r for r in results if r["split"] == split]
        if not rs:
            continue
        vals = [r["cumulative_reward"] for r in rs]
        gains = [r["cumulative_reward"] / base[r["seed"]] - 1 for r in rs if r["seed"] in base and base[r["seed"]]]
        mean_gain = statistics.fmean(gains) if gains else float("nan")
        half = (T95.get(len(gains) - 1, 2.0) * statistics.stdev(gains) / math.sqrt(len(gains))
                if len(gains) > 1 else float("nan"))
        groups = sorted({k for r in rs for k in r["per_group"]})
        table[split] = {
            "cumulative_reward_mean": statistics.fmean(vals),
            "cumulative_reward_min": min(vals), "cumulative_reward_max": max(vals),
            "gain_vs_first": mean_gain, "gain_ci95_half_width": half,
            "per_group_mean": {g: statistics.fmean(r["per_group"][g] for r in rs) for g in groups},
            "external_groups_used_mean": statistics.fmean(r["external_groups_used"] for r in rs),
            "seeds": [r["seed"] for r in rs],
        }
    return table


def write(out: Path, args, results: list[dict], table: dict, wall: float) -> None:
    payload = {"args": vars(args) | {"out": str(args.out)}, "wall_s": wall, "results": results, "table": table,
               "paper": PAPER}
    (out / "sapo_table.json").write_text(json.dumps(payload, indent=1))
    lines = [f"# SAPO table at tiny scale ({args.regime} regime)", "",
             f"{args.nodes} nodes x {args.rounds} rounds, {args.seeds} seeds per split, external advantages: "
             f"{args.external_advantages}; {wall / 60:.1f} min on this machine.", "",
             "| local/external | cumulative reward (mean over seeds) | min-max | gain vs 8/0 (95% CI) | "
             "paper (8 x Qwen2.5-0.5B, 2000 rounds) | paper gain |", "|---|---|---|---|---|---|"]
    for split, t in table.items():
        ci = "" if math.isnan(t["gain_ci95_half_width"]) else f" ± {100 * t['gain_ci95_half_width']:.1f}%"
        paper = PAPER.get(split)
        pg = f"{100 * (paper / PAPER['8/0'] - 1):+.0f}%" if paper else ""
        lines.append(f"| {split} | {t['cumulative_reward_mean']:.1f} | {t['cumulative_reward_min']:.1f}-"
                     f"{t['cumulative_reward_max']:.1f} | {100 * t['gain_vs_first']:+.1f}%{ci} | "
                     f"{paper if paper else ''} | {pg} |")
    if any(len(t["per_group_mean"]) > 1 for t in table.values()):
        lines += ["", "Per node group (cumulative reward, mean over seeds):", ""]
        for split, t in table.items():
            lines.append(f"- {split}: " + ", ".join(f"{g} {v:.1f}" for g, v in t["per_group_mean"].items()))
    (out / "sapo_table.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        xs = list(table)
        ax.bar(xs, [table[s]["cumulative_reward_mean"] for s in xs],
               yerr=[[table[s]["cumulative_reward_mean"] - table[s]["cumulative_reward_min"] for s in xs],
                     [table[s]["cumulative_reward_max"] - table[s]["cumulative_reward_mean"] for s in xs]],
               capsize=4, color="#4c72b0")
        ax.set_xlabel("local / external groups per batch")
        ax.set_ylabel("cumulative reward (nodes x rounds)")
        ax.set_title(f"SAPO splits, {args.regime} regime, {args.nodes} nodes x {args.rounds} rounds")
        fig.tight_layout()
        fig.savefig(out / "sapo_table.png", dpi=110)
        plt.close(fig)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--splits", default="8/0,6/2,4/4,2/6")
    ap.add_argument("--regime", default="default", choices=["default", "sparse", "mixed"])
    ap.add_argument("--external-advantages", default="all", choices=["all", "positive"])
    ap.add_argument("--timeout", type=float, default=3600.0, help="per simulation")
    args = ap.parse_args()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = []
    for seed in range(args.seeds):
        for split in splits:
            run_dir = args.out / f"{split.replace('/', '-')}-seed{seed}"
            if (run_dir / "report.json").exists():
                raise SystemExit(f"{run_dir} exists: use a new --out")
            r = run_one(run_dir, split, seed, args)
            results.append(r)
            print(f"{split} seed {seed}: cumulative reward {r['cumulative_reward']:.1f} "
                  f"(external groups used {r['external_groups_used']}, {r['wall_s']:.0f} s)", flush=True)
            table = summarise(results, splits)
            write(args.out, args, results, table, time.time() - t0)
    print((args.out / "sapo_table.md").read_text())


if __name__ == "__main__":
    main()
