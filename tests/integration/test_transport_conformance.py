"""One conformance suite for every transport backend, on real OS processes bound to 127.0.0.1 port 0.

Each peer is ``python -m swarm.transport.peer_process`` (driven over stdin/stdout JSON lines); node 0 starts
first, the others bootstrap from the addresses it reports. Backend-specific knowledge lives in ``_factory``.
"""

from __future__ import annotations

import importlib.util
import socket

import psutil
import pytest

from swarm.identity import Identity
from swarm.transport.peer_process import PeerProcess
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.slow

BACKENDS = ["hivemind", "hivemind-poll", "libp2p"]
SIZES = [1024, 65536, 262144, 1048576]


def _factory(name: str) -> tuple[str, list[str]]:
    """(backend, extra peer_process args) for a suite variant; skip it when its library is not installed.

    "hivemind-poll" switches off the pushed hints so that delivery rests on DHT polling alone."""
    backend, extra = {"hivemind": ("hivemind", []), "hivemind-poll": ("hivemind", ["--no-hints"]),
                      "libp2p": ("libp2p", [])}[name]
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    return backend, extra


class Swarm:
    """Peer processes of one test: started here, stopped in ``close`` (by pid), with per-peer logs."""

    def __init__(self, variant: str, tmp_path):
        self.tmp_path = tmp_path
        self.backend, self.extra = _factory(variant)
        self.procs: list[PeerProcess] = []
        self.descendants: list[psutil.Process] = []  # p2pd & co, to prove nothing outlives its peer

    def spawn(self, peers=()) -> PeerProcess:
        p = PeerProcess(self.backend, self.tmp_path / f"peer{len(self.procs)}.log", peers=list(peers),
                        extra_args=self.extra)
        self.procs.append(p)
        return p

    def ready(self, p: PeerProcess, timeout: float = 60) -> PeerProcess:
        info = p.wait_ready(timeout)
        assert info.get("event") == "ready", info
        self.descendants += psutil.Process(p.proc.pid).children(recursive=True)
        return p

    def start(self, n: int) -> list[PeerProcess]:
        first = self.ready(self.spawn())
        rest = [self.spawn(first.addresses) for _ in range(n - 1)]
        return [first] + [self.ready(p) for p in rest]

    def close(self) -> None:
        for p in self.procs:
            p.close()
        for d in self.descendants:  # only processes our peers started, by pid
            if d.is_running() and d.status() != psutil.STATUS_ZOMBIE:
                d.kill()


@pytest.fixture(params=BACKENDS)
def swarm(request, tmp_path):
    s = Swarm(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close()


class Inbox:
    """What each peer received, accumulated across ``received`` calls."""

    def __init__(self, procs):
        self.items = {id(p): [] for p in procs}
        self.procs = list(procs)

    def add(self, p):
        self.procs.append(p)
        self.items[id(p)] = []

    def poll(self):
        for p in self.procs:
            if p.proc.poll() is None:
                self.items[id(p)] += p.request("received")["items"]

    def ids(self, p) -> set:
        return {i["id"] for i in self.items[id(p)]}

    def has(self, expected: dict) -> bool:
        """expected: peer -> ids it must have received."""
        self.poll()
        return all(ids <= self.ids(p) for p, ids in expected.items())


def test_every_peer_receives_every_other_peers_messages(swarm):
    procs = swarm.start(4)
    inbox = Inbox(procs)
    for i, p in enumerate(procs):
        p.request("publish", id=f"m{i}", size=4096)
    expected = {p: {f"m{j}" for j in range(4) if j != i} for i, p in enumerate(procs)}
    wait_for(lambda: inbox.has(expected), timeout=30, interval=0.2, what="all-to-all delivery")
    by_id = {f"m{i}": p.peer_id for i, p in enumerate(procs)}
    for i, p in enumerate(procs):
        items = inbox.items[id(p)]
        assert f"m{i}" not in {x["id"] for x in items}, "a peer got its own message back"
        assert all(x["sender"] == by_id[x["id"]] for x in items), "sender is not the publisher's peer id"
        assert len(items) == len({x["id"] for x in items}), "duplicate delivery"
    for p in procs:
        others = {q.peer_id for q in procs if q is not p}
        assert others <= set(p.request("peers")["peers"]) and p.peer_id not in p.request("peers")["peers"]


def test_payloads_up_to_1mb_arrive_intact(swarm):
    procs = swarm.start(3)
    inbox = Inbox(procs)
    digests = {f"s{size}": procs[0].request("publish", id=f"s{size}", size=size)["sha256"] for size in SIZES}
    wait_for(lambda: inbox.has({p: set(digests) for p in procs[1:]}), timeout=60, interval=0.2,
             what="all sizes delivered")
    for p in procs[1:]:
        got = {x["id"]: x for x in inbox.items[id(p)]}
        for size in SIZES:
            assert got[f"s{size}"]["size"] == size
            assert got[f"s{size}"]["sha256"] == digests[f"s{size}"]


def test_peer_leaves_and_a_later_joiner_still_gets_new_messages(swarm):
    a, b, c = swarm.start(3)
    inbox = Inbox([a, b])
    c.terminate()  # gone without a goodbye
    a.request("publish", id="after-leave", size=2048)
    wait_for(lambda: inbox.has({b: {"after-leave"}}), timeout=30, interval=0.2, what="delivery after a leave")

    d = swarm.ready(swarm.spawn(b.addresses))  # joins through a peer other than the first
    inbox.add(d)
    a.request("publish", id="from-a", size=2048)
    b.request("publish", id="from-b", size=2048)
    d.request("publish", id="from-d", size=2048)
    wait_for(lambda: inbox.has({d: {"from-a", "from-b"}, a: {"from-b", "from-d"}, b: {"from-a", "from-d"}}),
             timeout=40, interval=0.2, what="delivery to and from the late joiner")


def test_unreachable_bootstrap_peer_fails_start_with_bootstrap_error(swarm):
    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        addr = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}/p2p/{Identity.generate().peer_id}"
        p = swarm.spawn([addr])
        info = p.wait_ready(60)
        assert info["event"] == "error" and info["kind"] == "BootstrapError", info
        assert addr in info["message"]
        p.proc.wait(20)
        assert p.proc.returncode == 3


def test_stop_leaves_no_child_process_and_exits(swarm):
    procs = swarm.start(2)
    children = [psutil.Process(p.proc.pid).children(recursive=True) for p in procs]
    for p, kids in zip(procs, children):
        assert p.close() == 0
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left behind: {[(k.pid, k.name()) for k in alive]}"


def test_kill_9_of_a_peer_leaves_no_child_process(swarm):
    # A node killed with SIGKILL cannot clean up; its helper processes (p2pd for hivemind) must still die.
    (p,) = swarm.start(1)
    kids = psutil.Process(p.proc.pid).children(recursive=True)
    p.proc.kill()
    p.proc.wait(10)

    def all_gone():
        return not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]

    wait_for(all_gone, 15, what="children of a SIGKILLed peer to exit")
