"""Real swarm on loopback: a bootstrap peer, three `sapo run` nodes sharing rollouts, and a hostile peer."""

import json
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import metrics, sapo_cmd, start_sapo, stop, wait_for

pytestmark = pytest.mark.slow

# The default warm start (200 steps) so that groups carry reward signal; built once per test session.
NODE = ["--set", "threads=1", "--set", "checkpoint.every_rounds=100000"]
HOSTILE_REASONS = {"bad_signature", "sender_mismatch", "replay", "duplicate", "self", "ignored_peer"}


def _node_json(run_dir):
    try:
        return json.loads((run_dir / "node.json").read_text())
    except (OSError, ValueError):
        return None


def _last(run_dir):
    rows = metrics(run_dir)
    return rows[-1] if rows else None


def test_bootstrap_three_nodes_share_and_reject_forgeries(tmp_path):
    procs = []
    try:
        boot_dir = tmp_path / "boot"
        procs.append(subprocess.Popen(sapo_cmd("bootstrap", "--run-dir", str(boot_dir)),
                                      stdout=open(tmp_path / "boot.log", "w"), stderr=subprocess.STDOUT))
        boot = wait_for(lambda: _node_json(boot_dir), 60, what="bootstrap node.json")
        assert boot["role"] == "bootstrap" and boot["addrs"]
        addr = boot["addrs"][0]
        assert addr.endswith("/p2p/" + boot["peer_id"])

        dirs = [tmp_path / f"n{i}" for i in range(3)]
        for i, d in enumerate(dirs):
            procs.append(start_sapo("run", "--run-dir", str(d), "--peers", addr, "--set", f"seed={i}", *NODE,
                                    log=tmp_path / f"n{i}.log"))
        infos = [wait_for(lambda d=d: _node_json(d), 120, what=f"{d.name}/node.json") for d in dirs]
        assert len({i["peer_id"] for i in infos}) == 3

        # every node admits peers' groups and trains on them
        wait_for(lambda: all(any(r["external_groups"] > 0 for r in metrics(d)) for d in dirs), 240,
                 interval=1.0, what="external groups used by all three nodes")
        for d in dirs:
            last = _last(d)
            assert last["admitted"] > 0 and last["peers"] >= 2
            assert last["rejected"] == {}, f"{d.name} rejected honest traffic: {last['rejected']}"
            assert last["bytes_in"] > 0 and last["bytes_out"] > 0
            used = [r for r in metrics(d) if r["external_groups"] > 0]
            assert all(r["local_groups"] + r["external_groups"] == 8 for r in metrics(d))
            assert used

        # a hostile peer: forged, tampered and replayed envelopes
        out = subprocess.run([sys.executable, "-m", "tests.integration.adversary", "--peers", addr,
                              "--victim", infos[0]["peer_id"]], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        sent = json.loads(out.stdout.strip().splitlines()[-1])
        hostile = sent["forged"] + sent["tampered"] + sent["replayed"]
        assert sent["forged"] > 0 and sent["tampered"] > 0 and sent["replayed"] > 0
        rounds_before = [_last(d)["round"] for d in dirs]

        def all_rejected():
            rows = [_last(d) for d in dirs]
            return all(sum(r["rejected"].values()) >= hostile for r in rows)

        wait_for(all_rejected, 120, interval=1.0, what="every hostile envelope rejected by every node")
        time.sleep(2.0)
        for d, before in zip(dirs, rounds_before):
            last = _last(d)
            assert set(last["rejected"]) <= HOSTILE_REASONS, last["rejected"]
            assert sum(last["rejected"].values()) == hostile, last["rejected"]  # each counted once, none admitted
            # The hostile peer's failures are charged to it (the transport authenticates it as the sender):
            # after swarm.reputation.ignore_at (16) of them it is ignored, and the rest are dropped unverified.
            bad, ignored = last["rejected"].get("bad_signature", 0), last["rejected"].get("ignored_peer", 0)
            assert bad >= 16 and ignored > 0 and bad + ignored >= sent["forged"] + sent["tampered"], last["rejected"]
            assert last["round"] > before  # still training
        for p in procs:
            assert p.poll() is None, "a node died"
    finally:
        for p in procs:
            stop(p)
    for p in procs:
        assert p.returncode == 0
