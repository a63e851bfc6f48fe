"""`sapo report` (plot_runs), `sapo status` and `sapo health` on synthetic run dirs (no model, no torch)."""

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from node.cli import app
from node.report import DPI, FIGSIZE, moving_average, plot_runs
from node.status import collect, health, last_row, pid_alive, render, sparkline


def _run_dir(path, n=40, start=0.2, slope=0.01, node=None, ckpt_round=None, t0=None):
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - n if t0 is None else t0
    with open(path / "metrics.jsonl", "w") as f:
        for r in range(1, n + 1):
            f.write(json.dumps({"round": r, "reward_mean": min(1.0, start + slope * r), "loss": -0.01,
                                "local_groups": 6, "external_groups": 2, "gen_tokens_per_s": 1e4,
                                "train_tokens_per_s": 2e4, "round_s": 0.1, "admitted": r, "peers": 1,
                                "rejected": {"stale": 2, "bad_signature": 1}, "bytes_in": 2048 * r,
                                "bytes_out": 1024 * r, "time": t0 + r}) + "\n")
        f.write('{"round": 41, "rew')  # a line torn by a crash
    if node is not None:
        (path / "node.json").write_text(json.dumps(node))
    if ckpt_round is not None:
        d = path / "checkpoints" / f"round-{ckpt_round:06d}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"round": ckpt_round, "saved_at": time.time() - 120}))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_plot_runs_writes_a_png_of_the_documented_size(tmp_path):
    a = _run_dir(tmp_path / "a")
    b = _run_dir(tmp_path / "b", start=0.1, slope=0.02)
    out = plot_runs([a, b], tmp_path / "plots" / "reward.png", labels=["alone", "swarm"], title="t")
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        # not blank: the curves put many distinct colours on the canvas
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_plot_runs_errors_name_the_problem(tmp_path):
    a = _run_dir(tmp_path / "a")
    with pytest.raises(ValueError, match="2 labels for 1 run"):
        plot_runs([a], tmp_path / "x.png", labels=["x", "y"])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_runs([tmp_path / "nope"], tmp_path / "x.png")


def test_moving_average_and_sparkline():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert sparkline([0, 0.5, 1]) == "▁▅█"
    assert sparkline([0.3, 0.3]) == "▁▁"
    assert len(sparkline([i / 100 for i in range(1000)], width=40)) == 40


def test_status_of_a_finished_run(tmp_path):
    d = _run_dir(tmp_path / "run", node={"peer_id": "12D3KooWfinished", "addrs": ["/ip4/127.0.0.1/tcp/5/p2p/x"],
                                         "swarm_id": "s", "transport": "hivemind", "pid": _dead_pid(),
                                         "started_at": time.time() - 100, "stopped_at": time.time() - 5},
                 ckpt_round=40)
    s = collect(d)
    assert s["peer_id"] == "12D3KooWfinished" and not s["alive"] and "clean exit" in s["state"]
    assert s["round"] == 40 and s["rounds"] == 40
    assert s["reward_first10"] == pytest.approx(0.255) and s["reward_last10"] == pytest.approx(0.555)
    assert s["checkpoint_round"] == 40 and 100 < s["checkpoint_age"] < 200
    assert s["external_total"] == 80 and s["rejected"] == {"stale": 2, "bad_signature": 1}
    out = CliRunner().invoke(app, ["status", str(d)], terminal_width=120)
    assert out.exit_code == 0, out.output
    for words in ("12D3KooWfinished", "stopped", "0.255 (first 10) -> 0.555 (last 10)", "stale 2",
                  "round 40, saved 2 min ago", "80 external in all"):
        assert words in out.output, (words, out.output)


def test_status_of_a_crashed_run_and_of_a_missing_dir(tmp_path):
    d = _run_dir(tmp_path / "run", node={"pid": _dead_pid(), "started_at": time.time() - 50})
    assert "not running" in collect(d)["state"]
    render(collect(d))
    out = CliRunner().invoke(app, ["status", str(tmp_path / "missing")])
    assert out.exit_code == 1


def test_health(tmp_path):
    now = time.time()
    assert health(tmp_path / "none")[0] is False
    me = {"pid": os.getpid(), "started_at": now - 5}
    fresh = _run_dir(tmp_path / "fresh", n=5, t0=now - 6, node=me)
    ok, line = health(fresh, 300, now=now)
    assert ok and "round 5" in line
    ok, line = health(fresh, 300, now=now + 400)
    assert not ok and "no round finished for" in line
    # rows from before this process started (a resume): it is starting, not stale, until max-age
    old = _run_dir(tmp_path / "old", n=5, t0=now - 5000, node=me)
    assert health(old, 300, now=now)[0] and not health(old, 300, now=now + 400)[0]
    dead = _run_dir(tmp_path / "dead", n=5, t0=now - 6, node={"pid": _dead_pid(), "started_at": now - 10})
    ok, line = health(dead, 300, now=now)
    assert not ok and "not running" in line
    stopped = _run_dir(tmp_path / "stopped", n=5, node={**me, "stopped_at": now})
    assert not health(stopped)[0]
    runner = CliRunner()
    assert runner.invoke(app, ["health", str(fresh)]).exit_code == 0
    res = runner.invoke(app, ["health", str(dead)])
    assert res.exit_code == 1 and "not running" in res.output


def test_pid_alive_rejects_a_recycled_pid():
    assert pid_alive(os.getpid())
    assert not pid_alive(os.getpid(), started_at=0.0) or not os.path.exists("/proc/self/stat")
    assert not pid_alive(None) and not pid_alive(-3)


def test_last_row_skips_a_torn_line(tmp_path):
    d = _run_dir(tmp_path / "r", n=3)
    assert last_row(d)["round"] == 3
    assert last_row(tmp_path / "none") is None


def test_report_command(tmp_path):
    a, b = _run_dir(tmp_path / "a"), _run_dir(tmp_path / "b")
    out = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "r.png"), "--labels", "x,y"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.png").stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "zzz"), "--out", str(tmp_path / "r2.png")])
    assert bad.exit_code == 1 and "metrics.jsonl" in bad.output
