"""``sapo report``: reward curves of one or more runs in one PNG.

    sapo report RUN_DIR [RUN_DIR ...] --out reward.png [--labels a,b] [--title TEXT]
    plot_runs([Path("runs/a"), Path("runs/b")], Path("reward.png"), labels=["a", "b"])   # from Python

Two panels: left, ``reward_mean`` per round (raw, faint) with its moving average (window about 1/30 of the
run, at least 5 rounds and at most 100) for each run; right, the cumulative reward (sum of ``reward_mean``
over rounds), the SAPO paper's headline comparison. The image is FIGSIZE x DPI pixels exactly (no tight
bounding box), so harnesses can rely on its size. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

FIGSIZE = (12.0, 4.5)
DPI = 100


def load_rewards(run_dir: Path) -> tuple[list[int], list[float]]:
    """(rounds, reward_mean) of RUN_DIR/metrics.jsonl, rounds ascending; rows without a reward skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run dir of `sapo run`?")
    by_round: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        r, v = row.get("round"), row.get("reward_mean")
        if isinstance(r, int) and isinstance(v, (int, float)):
            by_round[r] = float(v)  # a redone round (after a resume) replaces the earlier row
    if not by_round:
        raise ValueError(f"{path} has no rounds with a reward_mean yet")
    rounds = sorted(by_round)
    return rounds, [by_round[r] for r in rounds]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start, so the curve starts at round 1)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def default_window(n: int) -> int:
    return max(5, min(100, n // 30))


def plot_runs(run_dirs: list[Path], out: Path, labels: list[str] | None = None,
              title: str | None = None) -> Path:
    """Plot reward (moving average over raw) and cumulative reward of ``run_dirs`` into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("plot_runs: no run dirs given")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(run_dirs)} run dirs; give one per run")
    if labels is None:
        names = [d.name or str(d) for d in run_dirs]
        labels = names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
    data = [load_rewards(d) for d in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    try:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        window = default_window(max(len(v) for _, v in data))
        for i, ((rounds, rewards), label) in enumerate(zip(data, labels)):
            c = colors[i % len(colors)]
            ax_r.plot(rounds, rewards, color=c, alpha=0.3, linewidth=0.8)
            ax_r.plot(rounds, moving_average(rewards, window), color=c, linewidth=1.8, label=label)
            cum, acc = [], 0.0
            for v in rewards:
                acc += v
                cum.append(acc)
            ax_c.plot(rounds, cum, color=c, linewidth=1.8, label=f"{label} ({acc:.1f})")
        ax_r.set_title(f"reward_mean (moving average over {window} rounds; raw faint)")
        ax_r.set_xlabel("round")
        ax_r.set_ylabel("reward")
        ax_r.grid(alpha=0.3)
        ax_r.legend(loc="lower right", fontsize="small")
        ax_c.set_title("cumulative reward")
        ax_c.set_xlabel("round")
        ax_c.set_ylabel("sum of reward_mean")
        ax_c.grid(alpha=0.3)
        ax_c.legend(loc="upper left", fontsize="small")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return out
