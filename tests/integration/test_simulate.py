"""`sapo simulate` on the CI-sized smoke scenario: real processes, churn, one adversary of each kind."""

import json
import subprocess

import psutil
import pytest

from tests.integration.helpers import sapo_cmd

pytestmark = pytest.mark.slow

SMOKE = "configs/sim/smoke.yaml"


def test_smoke_scenario(tmp_path):
    out = tmp_path / "sim"
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    run = subprocess.run(sapo_cmd("simulate", "--scenario", SMOKE, "--out", str(out), "--no-live"),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    nodes = {n["name"]: n for n in report["nodes"]}
    honest = [n for n in report["nodes"] if n["role"] == "honest"]
    assert len(honest) == 3 and not report["totals"]["crashed_nodes"]

    for n in honest:
        assert n["rounds"] == 60
        assert n["admitted"] > 0 and n["external_groups_used"] > 0
        # nothing an adversary signed got in, except a flooder's valid envelopes up to the rate limit
        leaked = {role: k for role, k in n["admitted_from_adversaries"].items() if role != "flooder"}
        assert not any(leaked.values()), leaked
        assert set(n["rejected"]) <= {"bad_signature", "false_claims", "undecodable", "oversize", "duplicate",
                                      "self", "sender_mismatch", "rate_limited", "replay", "ignored_peer"}
    rejected = report["totals"]["honest_rejected"]
    for reason in ("bad_signature", "false_claims", "undecodable", "oversize"):
        assert rejected.get(reason, 0) > 0, (reason, rejected)
    sent = report["totals"]["hostile_sent"]
    assert {"poisoned", "forged", "bad_signature", "replayed", "flood", "garbage", "oversize"} <= set(sent)

    # the node killed with SIGKILL mid-run resumed from its checkpoint, with the same identity
    victim = out / "nodes" / "honest-2"
    log = (out / "nodes" / "honest-2.log").read_text()
    assert "resumed from" in log
    ids = [line.split()[1] for line in log.splitlines() if line.startswith("identity ")]
    assert len(ids) == 2 and ids[0] == ids[1] == nodes["honest-2"]["peer_id"]
    rounds = [json.loads(x)["round"] for x in (victim / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 61))

    assert (out / "summary.md").read_text().startswith("# Simulation `smoke`")
    assert (out / "rewards.png").stat().st_size > 10_000
    # the harness left no process behind (nodes, bootstrap, p2pd)
    left = [p for p in me.children(recursive=True) if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name()) for p in left]


def test_bad_scenario_is_rejected_with_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrounds: 3\ngroups: [{name: a, count: 2, colour: red}]\n")
    out = subprocess.run(sapo_cmd("simulate", "--scenario", str(bad), "--out", str(tmp_path / "o")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "colour" in out.stderr
    ev = tmp_path / "ev.yaml"
    ev.write_text("name: x\nrounds: 3\ngroups: [{name: a}]\nevents: [{at: 1, action: kill9, node: b-0}]\n")
    out = subprocess.run(sapo_cmd("simulate", "--scenario", str(ev), "--out", str(tmp_path / "o2")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown node" in out.stderr
