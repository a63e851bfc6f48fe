"""Per-round metrics: ``RUN_DIR/metrics.jsonl`` (one JSON object per round) and the console progress line.

Keys every round carries: ``round``, ``reward_mean`` (mean reward of this node's own fresh completions),
``local_groups`` and ``external_groups`` (groups in the training batch), ``loss``, ``gen_tokens_per_s``,
``train_tokens_per_s``, ``round_s``; plus diagnostics (see README).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def read_rows(run_dir: Path) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.jsonl`` (skipping a line torn by a crash mid-write)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class MetricsLog:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def rows(self) -> list[dict]:
        return read_rows(self.path.parent)

    def truncate_after(self, round_idx: int) -> None:
        """Drop rows of rounds after ``round_idx`` (they are redone after a resume); atomic rewrite."""
        rows = [r for r in self.rows() if r.get("round", 0) <= round_idx]
        tmp = self.path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        except OSError as exc:  # disk full: the original file stays as it was
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        """Append one line, all or nothing: a failed write (disk full) is cut back off, so the file never ends in a
        torn line that the next append would glue a good row onto."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        data = memoryview((json.dumps(clean) + "\n").encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                while data:  # unbuffered: a short write is seen here, not at close
                    data = data[os.write(fd, data):]
            except OSError as exc:
                os.ftruncate(fd, start)  # shrinking needs no free space
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        finally:
            os.close(fd)


def progress_line(row: dict) -> str:
    return (f"round {row['round']:>5} | reward {row['reward_mean']:.3f} | loss {row['loss']:+.4f} | "
            f"groups {row['local_groups']}L+{row['external_groups']}E | "
            f"gen {row['gen_tokens_per_s']:,.0f} tok/s | train {row['train_tokens_per_s']:,.0f} tok/s | "
            f"{row['round_s']:.2f} s")
