"""libp2p-only integration tests: relayed delivery keeps the author as sender, zero-config mDNS swarm, and a raw
hostile peer writing bad frames onto the gossipsub stream cannot take a node down.

Every node is its own ``python -m swarm.transport.peer_process --backend libp2p`` (py-libp2p and hivemind cannot
share one process: both register the protobuf package ``crypto.pb``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from swarm.transport.peer_process import REPO_ROOT, PeerProcess
from tests.integration.helpers import wait_for
from tests.integration.test_transport_conformance import Inbox

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("libp2p") is None, reason="libp2p is not installed")]


@pytest.fixture
def spawn(tmp_path):
    procs: list[PeerProcess] = []

    def _spawn(peers=(), swarm_id="conformance", extra=()) -> PeerProcess:
        p = PeerProcess("libp2p", tmp_path / f"peer{len(procs)}.log", peers=list(peers), swarm_id=swarm_id,
                        extra_args=list(extra))
        procs.append(p)
        info = p.wait_ready(60)
        assert info.get("event") == "ready", info
        return p

    try:
        yield _spawn
    finally:
        for p in procs:
            p.close()


def test_three_nodes_in_a_chain_deliver_with_the_author_as_sender(spawn):
    a = spawn()
    b = spawn(a.addresses)
    c = spawn(b.addresses)  # c knows only b: what c publishes reaches a through b (or a DHT-found link)
    inbox = Inbox([a, b, c])
    for p, name in ((a, "ma"), (b, "mb"), (c, "mc")):
        p.request("publish", id=name, size=100_000)  # 2 chunks each
    wait_for(lambda: inbox.has({a: {"mb", "mc"}, b: {"ma", "mc"}, c: {"ma", "mb"}}), timeout=30, interval=0.2,
             what="delivery across the chain")
    authors = {"ma": a.peer_id, "mb": b.peer_id, "mc": c.peer_id}
    for p in (a, b, c):
        assert all(x["sender"] == authors[x["id"]] for x in inbox.items[id(p)]), "a relay was named as sender"


def test_two_nodes_find_each_other_by_mdns_alone(spawn):
    a = spawn(swarm_id="mdns-test", extra=["--mdns", "--no-dht"])
    b = spawn(swarm_id="mdns-test", extra=["--mdns", "--no-dht"])
    wait_for(lambda: b.peer_id in a.request("peers")["peers"] and a.peer_id in b.request("peers")["peers"],
             timeout=30, interval=0.5, what="mDNS discovery")
    inbox = Inbox([a, b])
    a.request("publish", id="hello-b", size=3000)
    b.request("publish", id="hello-a", size=3000)
    wait_for(lambda: inbox.has({a: {"hello-a"}, b: {"hello-b"}}), timeout=20, interval=0.2, what="mDNS delivery")


def test_hostile_frames_from_a_raw_peer_do_not_stop_the_node(spawn):
    victim = spawn(extra=["--no-dht"])
    honest = spawn(victim.addresses, extra=["--no-dht"])
    raw = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "libp2p_raw_peer.py"), victim.addresses[0],
                          "--frames", "garbage", "oversize", "big"],
                         capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
    rows = [json.loads(line) for line in raw.stdout.splitlines() if line.startswith("{")]
    assert rows and rows[0] == {"frame": "garbage", "written": True, "error": None}, (rows, raw.stderr[-2000:])

    assert victim.proc.poll() is None
    stats = victim.request("stats")["stats"]
    assert stats["errors"].get("bad_frame_DecodeError", 0) >= 1, stats  # the garbage frame was seen and isolated
    inbox = Inbox([victim, honest])
    honest.request("publish", id="after-attack", size=200_000)
    victim.request("publish", id="victim-still-sends", size=2048)
    wait_for(lambda: inbox.has({victim: {"after-attack"}, honest: {"victim-still-sends"}}), timeout=20,
             interval=0.2, what="honest delivery after hostile frames")
