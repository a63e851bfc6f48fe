"""`sapo run` as a real OS process: metrics, checkpoints, resume, signals."""

import signal

import pytest

from tests.integration.helpers import SOLO, metrics, run_sapo, start_sapo, stop, wait_for

pytestmark = pytest.mark.slow

REQUIRED = {"round", "reward_mean", "local_groups", "external_groups", "loss", "gen_tokens_per_s",
            "train_tokens_per_s", "round_s"}


def _ckpt_rounds(run_dir):
    root = run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("round-*")) if root.exists() else []


def test_run_writes_metrics_checkpoint_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = run_sapo("run", "--run-dir", str(a), "--rounds", "3", *SOLO, "--set", "checkpoint.every_rounds=2")
    assert first.returncode == 0, first.stdout + first.stderr
    rows = metrics(a)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert REQUIRED <= set(r)
        assert 0.0 <= r["reward_mean"] <= 1.0 and r["local_groups"] == 8 and r["external_groups"] == 0
        assert r["gen_tokens_per_s"] > 0 and r["train_tokens_per_s"] > 0 and r["round_s"] > 0
    assert (a / "config.yaml").is_file()
    assert _ckpt_rounds(a) == [2, 3]

    again = run_sapo("run", "--run-dir", str(a), "--rounds", "5", *SOLO, "--set", "checkpoint.every_rounds=2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from" in again.stdout and "at round 4" in again.stdout
    assert [r["round"] for r in metrics(a)] == [1, 2, 3, 4, 5]

    # Same weights, optimizer and RNG after the resume: a straight 5-round run matches round for round.
    straight = run_sapo("run", "--run-dir", str(b), "--rounds", "5", *SOLO)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    for x, y in zip(metrics(a), metrics(b)):
        assert x["reward_mean"] == y["reward_mean"] and x["loss"] == pytest.approx(y["loss"], abs=1e-7)


def test_finished_run_does_nothing_more(tmp_path):
    out = run_sapo("run", "--run-dir", str(tmp_path), "--rounds", "1", *SOLO)
    assert out.returncode == 0
    again = run_sapo("run", "--run-dir", str(tmp_path), "--rounds", "1", *SOLO)
    assert again.returncode == 0 and "already reached round 1" in again.stdout
    assert len(metrics(tmp_path)) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_zero(tmp_path, sig):
    proc = start_sapo("run", "--run-dir", str(tmp_path), *SOLO, "--set", "checkpoint.every_rounds=1000",
                      log=tmp_path / "node.log")
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 2, 120, what="two rounds")
        proc.send_signal(sig)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    last = metrics(tmp_path)[-1]["round"]
    assert _ckpt_rounds(tmp_path) == [last]
    out = run_sapo("run", "--run-dir", str(tmp_path), "--rounds", str(last + 1), *SOLO)
    assert out.returncode == 0
    assert [r["round"] for r in metrics(tmp_path)] == list(range(1, last + 2))


def test_kill_9_resumes_from_last_checkpoint(tmp_path):
    proc = start_sapo("run", "--run-dir", str(tmp_path), *SOLO, "--set", "checkpoint.every_rounds=2",
                      log=tmp_path / "node.log")
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 5, 120, what="five rounds")
        proc.kill()
        proc.wait(10)
    finally:
        stop(proc)
    saved = _ckpt_rounds(tmp_path)[-1]
    target = len(metrics(tmp_path)) + 2
    out = run_sapo("run", "--run-dir", str(tmp_path), "--rounds", str(target), *SOLO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"at round {saved + 1}" in out.stdout
    assert [r["round"] for r in metrics(tmp_path)] == list(range(1, target + 1))  # no duplicates, no gaps


def test_bad_config_exits_2_with_field_name(tmp_path):
    out = run_sapo("run", "--run-dir", str(tmp_path), "--set", "train.lr=-1")
    assert out.returncode == 2
    assert "train.lr" in out.stderr and "greater than 0" in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_help_and_config_commands():
    out = run_sapo("--help")
    assert out.returncode == 0 and "run" in out.stdout
    cfg = run_sapo("config", "--set", "train.lr=0.5")
    assert cfg.returncode == 0 and "lr: 0.5" in cfg.stdout
