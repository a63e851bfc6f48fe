"""libp2p-only integration tests: relayed delivery keeps the author as sender, zero-config mDNS swarm, a raw
hostile peer writing bad frames onto the gossipsub stream cannot take a node down, QUIC, discovery through the
Kademlia DHT alone, and two `sapo run` nodes in network namespaces that cannot reach each other sharing rollouts
through a circuit relay v2 (`sapo bootstrap --relay`).

Every node is its own ``python -m swarm.transport.peer_process --backend libp2p`` or ``sapo`` process (py-libp2p
and hivemind cannot share one process: both register the protobuf package ``crypto.pb``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from swarm.transport.peer_process import REPO_ROOT, PeerProcess
from tests.integration.helpers import metrics, wait_for
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


@pytest.mark.parametrize("fault, healed_by", [("drop_pubsub_streams", "pubsub_stream_reopened"),
                                              ("forget_pubsub_topics", "pubsub_topics_requested")])
def test_gossip_to_a_peer_recovers_when_pubsub_loses_track_of_it(spawn, fault, healed_by):
    """py-libp2p can lose, for good, its outbound stream to a connected peer or the peer's topic announcement (it
    gives up on some errors while connections change, as after a hole punch then the relay stopping). Either way
    that peer would never hear from us again; the transport must notice and repair it."""
    a = spawn()
    b = spawn(a.addresses)
    inbox = Inbox([a, b])
    a.request("publish", id="before", size=1000)
    wait_for(lambda: inbox.has({b: {"before"}}), timeout=30, interval=0.2, what="delivery a -> b")
    assert a.request(fault)["peers"] >= 1
    sent = []

    def a_reaches_b() -> bool:
        # Both publish every 2 s, as nodes do every round (b's writes are what tell it that a reset its stream).
        sent.append(f"after-{len(sent)}")
        a.request("publish", id=sent[-1], size=1000)
        b.request("publish", id=f"b-{sent[-1]}", size=1000)
        inbox.poll()
        return bool(inbox.ids(b) & set(sent)) and any(i.startswith("b-") for i in inbox.ids(a))

    wait_for(a_reaches_b, timeout=90, interval=2.0, what=f"delivery a -> b after {fault}")
    assert a.request("stats")["stats"]["errors"].get(healed_by, 0) >= 1


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


def test_two_nodes_over_quic_deliver_1kb_to_1mb(spawn):
    quic = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-dht"]
    a = spawn(extra=quic)
    assert a.addresses and all("/udp/" in x and "/quic-v1/" in x for x in a.addresses), a.addresses
    b = spawn(a.addresses, extra=quic)
    wait_for(lambda: b.peer_id in a.request("peers")["peers"], timeout=20, interval=0.2, what="QUIC gossip peer")
    inbox = Inbox([a, b])
    sizes = {"q1k": 1024, "q64k": 65_536, "q256k": 262_144, "q1m": 1_048_576}
    for name, size in sizes.items():
        b.request("publish", id=name, size=size)
    a.request("publish", id="q-back", size=300_000)
    wait_for(lambda: inbox.has({a: set(sizes), b: {"q-back"}}), timeout=60, interval=0.2, what="QUIC delivery")
    got = {x["id"]: x["size"] for x in inbox.items[id(a)]}
    assert all(got[k] == v for k, v in sizes.items()), got
    assert all(x["sender"] == b.peer_id for x in inbox.items[id(a)])


def test_peers_that_share_only_a_bootstrap_find_each_other_through_the_dht(spawn):
    """B and C are given only A's address (mDNS off). Nobody tells C about B: C's Kademlia lookups through A
    return B, C connects to it, and after A is gone B and C still exchange payloads on their own link.
    Control: the same trio with the DHT off never links B and C."""
    a0 = spawn(swarm_id="dht-off", extra=["--no-dht"])
    b0 = spawn(a0.addresses, swarm_id="dht-off", extra=["--no-dht"])
    c0 = spawn(a0.addresses, swarm_id="dht-off", extra=["--no-dht"])

    a = spawn(swarm_id="dht-on")
    b = spawn(a.addresses, swarm_id="dht-on")
    c = spawn(a.addresses, swarm_id="dht-on")
    wait_for(lambda: b.peer_id in c.request("peers")["peers"] and c.peer_id in b.request("peers")["peers"],
             timeout=40, interval=0.5, what="B and C linked through the DHT")
    # the control trio ran at least as long: without the DHT, B and C only ever see A
    assert c0.request("peers")["peers"] == [a0.peer_id] and b0.request("peers")["peers"] == [a0.peer_id]

    a.close()  # the only peer B and C were given
    wait_for(lambda: a.peer_id not in b.request("peers")["peers"], timeout=20, interval=0.5, what="A gone")
    inbox = Inbox([b, c])
    b.request("publish", id="b-after-a", size=50_000)
    c.request("publish", id="c-after-a", size=50_000)
    wait_for(lambda: inbox.has({c: {"b-after-a"}, b: {"c-after-a"}}), timeout=20, interval=0.2,
             what="B <-> C delivery without A")


# ---------------------------------------------------------------------------------------------- relay / NAT
# Three network namespaces: R (the relay) has one veth into A's subnet and one into B's, and does not forward IP;
# A and B have only their own /24. A cannot open a TCP connection to B or B to A: everything between them goes
# through R, and R runs a different swarm id, so it carries none of their gossip itself: only a circuit can.
NODE = ["--set", "threads=1", "--set", "checkpoint.every_rounds=100000", "--set", "swarm.transport.mdns=false"]


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def _add_namespaces(names, made: list[str]) -> None:
    """Create each network namespace with its loopback up; ``made`` collects them for ``_del_namespaces``."""
    for ns in names:
        _sh("ip", "netns", "add", ns)
        made.append(ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")


def _del_namespaces(made: list[str]) -> None:
    for ns in made:  # deleting a namespace deletes what is inside it: veth ends (and so their peers), nft tables
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`)")
    tag = f"{os.getpid() % 100000}"
    names = {k: f"sapo{k}{tag}" for k in ("R", "A", "B")}
    links = {"A": (f"sRa{tag}", f"sAr{tag}", "10.77.1"), "B": (f"sRb{tag}", f"sBr{tag}", "10.77.2")}
    made: list[str] = []
    try:
        _add_namespaces(names.values(), made)
        for side, (r_if, x_if, net) in links.items():
            _sh("ip", "link", "add", r_if, "type", "veth", "peer", "name", x_if)
            _sh("ip", "link", "set", r_if, "netns", names["R"])
            _sh("ip", "link", "set", x_if, "netns", names[side])
            _sh("ip", "-n", names["R"], "addr", "add", f"{net}.1/24", "dev", r_if)
            _sh("ip", "-n", names[side], "addr", "add", f"{net}.2/24", "dev", x_if)
            _sh("ip", "-n", names["R"], "link", "set", r_if, "up")
            _sh("ip", "-n", names[side], "link", "set", x_if, "up")
        _sh("ip", "netns", "exec", names["R"], "sysctl", "-qw", "net.ipv4.ip_forward=0")
    except (subprocess.CalledProcessError, OSError) as e:
        _del_namespaces(made)
        for r_if, _, _ in links.values():  # a veth not yet moved still sits in this namespace
            subprocess.run(["ip", "link", "del", r_if], capture_output=True)
        pytest.skip(f"cannot build network namespaces here: {getattr(e, 'stderr', '') or e}")
    try:
        yield names
    finally:
        _del_namespaces(made)


def _node_json(run_dir):
    try:
        return json.loads((run_dir / "node.json").read_text())
    except (OSError, ValueError):
        return None


def _tcp_reachable(ns: str, addr: str) -> bool:
    """Whether a TCP connection from namespace ``ns`` to the ip4/tcp part of ``addr`` opens."""
    parts = addr.split("/")
    host, port = parts[parts.index("ip4") + 1], parts[parts.index("tcp") + 1]
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3)"
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                          timeout=30).returncode == 0


def test_nated_nodes_share_rollouts_through_a_circuit_relay(netns, ns_procs, tmp_path):
    start = ns_procs
    relay_dir = tmp_path / "relay"
    start(netns["R"], "bootstrap", "--transport", "libp2p", "--relay", "--run-dir", str(relay_dir),
          "--listen", "/ip4/10.77.1.1/tcp/0,/ip4/10.77.2.1/tcp/0", "--set", "swarm.swarm_id=relay-only",
          "--set", "swarm.transport.mdns=false", name="relay")
    relay = wait_for(lambda: _node_json(relay_dir), 60, what="relay node.json")
    r_for = {side: next(x for x in relay["addrs"] if f"/ip4/{net}.1/" in x)
             for side, net in (("A", "10.77.1"), ("B", "10.77.2"))}

    dirs = {side: tmp_path / side for side in ("A", "B")}
    for i, (side, net) in enumerate((("A", "10.77.1"), ("B", "10.77.2"))):
        # each node is given only the relay (as bootstrap peer and relay): it learns the other from the DHT
        start(netns[side], "run", "--transport", "libp2p", "--run-dir", str(dirs[side]), "--peers", r_for[side],
              "--set", f"swarm.transport.listen=[/ip4/{net}.2/tcp/0]", "--set", f"seed={i}",
              "--set", "swarm.transport.relay.enabled=true", *NODE, name=side)
    info = {side: wait_for(lambda d=d: _node_json(d), 120, what=f"{side}/node.json") for side, d in dirs.items()}
    for side in ("A", "B"):
        circuit = [x for x in info[side]["addrs"] if "/p2p-circuit/" in x]
        assert circuit == [f"{r_for[side]}/p2p-circuit/p2p/{info[side]['peer_id']}"], info[side]["addrs"]
    direct_b = next(x for x in info["B"]["addrs"] if "/p2p-circuit/" not in x)
    direct_a = next(x for x in info["A"]["addrs"] if "/p2p-circuit/" not in x)
    assert not _tcp_reachable(netns["A"], direct_b) and not _tcp_reachable(netns["B"], direct_a), \
        "the namespaces can reach each other directly: the test would prove nothing"
    assert _tcp_reachable(netns["A"], r_for["A"]) and _tcp_reachable(netns["B"], r_for["B"])

    # both train on the other's rollouts: they can only have come over the relayed connection
    wait_for(lambda: all(any(r["external_groups"] > 0 for r in metrics(d)) for d in dirs.values()), 240,
             interval=1.0, what="external groups on both NATed nodes")
    for side, d in dirs.items():
        last = metrics(d)[-1]
        assert last["admitted"] > 0 and last["peers"] >= 1, (side, last)
        assert last["rejected"] == {}, (side, last["rejected"])
    assert all(p.poll() is None for p in start.procs.values()), [p.returncode for p in start.procs.values()]
