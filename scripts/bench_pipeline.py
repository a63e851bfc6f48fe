"""Benchmark: the synchronous loop vs the async pipeline on the same node, side by side in one run.

    python scripts/bench_pipeline.py [--rounds 60] [--warmup 5] [--staleness 1] [--repeats 2]
                                     [--set key=value ...] [--gen-bench] [--gen-batch 64] [--out results.json]

For each mode it runs the node in this process (swarm off, a fresh run dir), alternating sync, async,
sync, async, ... ``--repeats`` times (so drift in machine load hits both alike), and reports the mean over
the rounds after the warm-up:

- samples/s: completions trained per second of wall time;
- generator / trainer utilisation: the fraction of wall time each side was busy (sum of ``gen_s`` or
  ``train_s`` over wall time). Sync mode has gen + train <= 1 by construction; async can exceed 1;
- staleness (max) and the async/sync samples/s ratio.

``--gen-bench`` also times generation alone at ``--gen-batch`` rows per call with the ``hf`` and ``fast``
backends (new tokens/s; random-weight models rarely stop early, so every row runs to max_new_tokens).

Examples: the CPU default (embedded tiny model) with no arguments; on a GPU
``--set model.name=embedded:qwen2.5-0.5b-shape --set model.warm_start_steps=0 --set device=cuda
--set generation.max_new_tokens=256 --gen-bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_mode(mode: str, overrides: list[str], rounds: int, warmup: int, staleness: int, root: Path) -> dict:
    from node.config import load_config
    from node.metrics import read_rows
    from node.runtime import Node

    cfg = load_config(overrides=["swarm.enabled=false", "checkpoint.every_rounds=100000", "metrics.log_every=100000",
                                 *overrides, f"runtime.mode={mode}", f"runtime.max_staleness={staleness}"])
    cfg.rounds = rounds
    run_dir = root / mode
    node = Node(cfg, run_dir, log=lambda *_: None)
    t0 = time.perf_counter()
    assert node.run() == 0
    total = time.perf_counter() - t0
    rows = [r for r in read_rows(run_dir) if r["round"] > warmup]
    # Wall time of the measured rounds: from the end of the warm-up round to the end of the last round.
    wall = rows[-1]["time"] - rows[0]["time"] + rows[0]["round_s"]
    per_round = (cfg.sapo.local_groups + cfg.sapo.external_groups) * cfg.generation.group_size
    gen_s = sum(r["gen_s"] for r in rows)
    train_s = sum(r["train_s"] for r in rows)
    return {
        "mode": mode, "rounds": len(rows), "wall_s": wall, "total_s": total,
        "samples_per_s": len(rows) * per_round / wall,
        "gen_util": gen_s / wall, "train_util": train_s / wall,
        "gen_s_per_round": gen_s / len(rows), "train_s_per_round": train_s / len(rows),
        "staleness_max": max(r["staleness"] for r in rows),
        "reward_mean": sum(r["reward_mean"] for r in rows) / len(rows),
        "tis_ess_min": min(r["tis_ess"] for r in rows),
        "device": _device_name(node.device),
    }


def gen_bench(overrides: list[str], batch: int, reps: int) -> list[dict]:
    import torch

    from node.config import load_config
    from node.generator import make_generator
    from node.model import load_policy, prompt_text, resolve_device, resolve_dtype

    cfg = load_config(overrides=[*overrides, f"generation.batch_size={batch}"])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    device = resolve_device(cfg.device)
    model, tok = load_policy(cfg.model, device, resolve_dtype(cfg.model.dtype, device), log=lambda *_: None)
    prompts = [prompt_text(tok, f"Calculate {i % 10} + {(3 * i) % 10}.", cfg.tasks.system_prompt)
               for i in range(batch)]
    out = []
    for backend in ("hf", "fast"):
        gcfg = cfg.generation.model_copy(update={"backend": backend})
        gen = make_generator(gcfg, model, tok, cfg.train.precision)
        gen.generate(prompts, 1, seed=0)  # warm-up (CUDA graph capture for fast)
        times, tokens = [], 0
        for k in range(reps):
            before = gen.tokens_generated
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            gen.generate(prompts, 1, seed=k + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            tokens += gen.tokens_generated - before
        out.append({"backend": backend, "batch": batch, "tokens_per_s": tokens / sum(times),
                    "s_per_call": sum(times) / reps, "graphs": bool(getattr(gen, "use_graphs", False)),
                    "device": _device_name(device)})
        del gen
    return out


def _mean(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = sum(r[key] for r in runs) / len(runs)
    out["staleness_max"] = max(r["staleness_max"] for r in runs)
    out["samples_per_s_each"] = [r["samples_per_s"] for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--staleness", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per mode")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--gen-bench", action="store_true", help="also time hf vs fast generation")
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--gen-reps", type=int, default=3)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    results: dict = {"overrides": args.overrides}
    if not args.skip_pipeline:
        root = Path(tempfile.mkdtemp(prefix="sapo-bench-pipeline-"))
        runs: dict[str, list[dict]] = {"sync": [], "async": []}
        for k in range(args.repeats):
            for m in ("sync", "async"):
                runs[m].append(run_mode(m, args.overrides, args.rounds, args.warmup, args.staleness, root / str(k)))
        modes = [_mean(runs[m]) for m in ("sync", "async")]
        sync, asyn = modes
        t = Table(title=f"sync vs async (staleness <= {args.staleness}), {sync['rounds']} measured rounds x "
                        f"{args.repeats} runs per mode, {sync['device']}")
        for col in ("mode", "samples/s", "per run", "gen util", "train util", "gen s/round", "train s/round", "max staleness",
                    "min TIS ESS", "reward"):
            t.add_column(col, justify="right")
        for m in modes:
            t.add_row(m["mode"], f"{m['samples_per_s']:.1f}",
                      " ".join(f"{x:.1f}" for x in m["samples_per_s_each"]), f"{m['gen_util']:.2f}", f"{m['train_util']:.2f}",
                      f"{m['gen_s_per_round']:.3f}", f"{m['train_s_per_round']:.3f}", str(m["staleness_max"]),
                      f"{m['tis_ess_min']:.3f}", f"{m['reward_mean']:.3f}")
        console.print(t)
        ratio = asyn["samples_per_s"] / sync["samples_per_s"]
        console.print(f"async / sync samples/s: [bold]{ratio:.2f}x[/bold]")
        results.update({"pipeline": modes, "async_over_sync": ratio})
    if args.gen_bench:
        rows = gen_bench(args.overrides, args.gen_batch, args.gen_reps)
        t = Table(title=f"generation alone, batch {args.gen_batch}, {rows[0]['device']}")
        for col in ("backend", "new tokens/s", "s per call", "CUDA graphs"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["backend"], f"{r['tokens_per_s']:,.0f}", f"{r['s_per_call']:.3f}", str(r["graphs"]))
        console.print(t)
        speed = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
        console.print(f"fast / hf tokens/s: [bold]{speed:.2f}x[/bold]")
        results.update({"generation": rows, "fast_over_hf": speed})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
