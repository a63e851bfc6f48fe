"""GPU check: the node's real loop on CUDA with a Qwen2.5-0.5B-shaped model (random weights, bf16 compute).

    python scripts/gpu_check.py [--rounds 3] [--max-new-tokens 256] [--out DIR]

Runs `sapo run` in-process for a few rounds with the embedded ``qwen2.5-0.5b-shape`` model (Qwen2.5-0.5B's
layer sizes and vocabulary, random init, no download), then prints generation and training tokens/s per
round, peak GPU memory and the card. Random weights rarely emit EOS, so every completion runs to
max_new_tokens: the numbers are a throughput check, not a learning check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--groups", type=int, default=8, help="questions per round (x8 completions)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: this check needs a GPU")
    from node.config import load_config
    from node.runtime import Node

    out = args.out or Path(tempfile.mkdtemp(prefix="sapo-gpu-"))
    cfg = load_config(overrides=[
        "model.name=embedded:qwen2.5-0.5b-shape", "model.warm_start_steps=0", "device=cuda",
        f"generation.max_new_tokens={args.max_new_tokens}", "generation.batch_size=64",
        f"sapo.local_groups={args.groups}", "train.micro_batch_size=16", f"rounds={args.rounds}",
        "checkpoint.every_rounds=1000",
    ])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    Node(cfg, out / "run").run()
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    result = {
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "rounds": [{k: r[k] for k in ("round", "gen_tokens_per_s", "train_tokens_per_s", "gen_s", "train_s",
                                      "completion_tokens_mean")} for r in rows],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "wall_s": time.time() - t0,
    }
    print(json.dumps(result, indent=1))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
