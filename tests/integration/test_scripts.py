"""The benchmark scripts keep running (tiny sizes; the numbers themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_bench_pipeline_runs_both_modes_and_both_generators(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_pipeline.py"), "--rounds", "5", "--warmup", "1", "--repeats", "1",
         "--gen-bench", "--gen-batch", "4", "--gen-reps", "1", "--set", "model.warm_start_steps=20",
         "--set", "threads=1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    sync, asyn = res["pipeline"]
    assert (sync["mode"], asyn["mode"]) == ("sync", "async")
    assert sync["staleness_max"] == 0 and asyn["staleness_max"] <= 1
    assert sync["samples_per_s"] > 0 and res["async_over_sync"] > 0
    assert sync["gen_util"] + sync["train_util"] <= 1.0 + 1e-6  # sync cannot overlap the two
    assert [g["backend"] for g in res["generation"]] == ["hf", "fast"]
    assert "async / sync samples/s" in proc.stdout and "fast / hf tokens/s" in proc.stdout
