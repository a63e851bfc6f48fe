"""Nodes behind real masquerading NATs (network namespaces + nftables), reached through a relay.

Topology (``nat`` fixture), one namespace each::

    HA 192.168.1.2 -- 192.168.1.1 RA 203.0.113.2 --.                  .-- 203.0.114.2 RB 192.168.2.1 -- 192.168.2.2 HB
     (home A)     (router A: masquerade)           P 198.51.100.1         (router B: masquerade)     (home B)
                                          (the internet: routes between the routers' WAN
                                           links; the relay listens on 198.51.100.1)

Each router forwards only LAN -> WAN and replies (``ct state established,related``), masquerades what leaves its WAN
link, and drops unsolicited packets on its WAN side: HA and HB can dial the relay (which sees them as 203.0.113.2 /
203.0.114.2), nobody can dial into HA or HB. The fixture checks all of that before a test uses it.

* ``test_nated_nodes_share_rollouts_through_the_relay``: two ``sapo run --transport libp2p`` behind the NATs, with
  hole punching off, train on each other's rollouts through ``sapo bootstrap --relay`` (circuit relay v2); the
  homes' only TCP connections lead to the relay.
* ``test_hole_punching_makes_the_link_direct_and_survives_the_relay``: with ``relay.hole_punch`` (DCUtR), a direct
  TCP connection HA:port <-> 203.0.114.2:port appears (TCP simultaneous open through both NATs: nft masquerade
  keeps the source port); then the relay is stopped and rollouts keep flowing between the two nodes.

Skipped (with the reason) without root, ``ip`` or ``nft``. Every namespace is deleted and every process stopped by
pid in ``finally``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import metrics, stop, wait_for
from tests.integration.test_libp2p import NODE, _add_namespaces, _del_namespaces, _node_json, _sh, _tcp_reachable

pytestmark = [pytest.mark.slow]
needs_libp2p = pytest.mark.skipif(importlib.util.find_spec("libp2p") is None, reason="libp2p is not installed")

RELAY_IP = "198.51.100.1"
HOMES = {  # side: (LAN prefix, router WAN address, P's address on that WAN link)
    "A": ("192.168.1", "203.0.113.2", "203.0.113.1"),
    "B": ("192.168.2", "203.0.114.2", "203.0.114.1"),
}

NFT_ROUTER = """
table ip sapo_nat {{
  chain nat_out {{ type nat hook postrouting priority srcnat; oifname "{wan}" masquerade; }}
  chain filter_fwd {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept; iifname "{lan}" oifname "{wan}" accept; }}
  chain filter_in {{ type filter hook input priority filter; policy accept;
    iifname "{wan}" ct state != established,related drop; }}
}}
"""

# Accepts connections and prints the address each came from (to see the routers' masquerade from the relay's side).
ECHO_PEER = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
             "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('ready', flush=True)\n"
             "while True:\n c, a = s.accept(); print(a[0], flush=True); c.close()")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` to build the NATs (apt-get install {pkg})"
    return None


def _ns_python(ns: str, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def nat(tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    ns = {k: f"sapo{k}{tag}" for k in ("P", "RA", "RB", "HA", "HB")}
    made: list[str] = []
    try:
        _add_namespaces(ns.values(), made)
        _sh("ip", "-n", ns["P"], "addr", "add", f"{RELAY_IP}/32", "dev", "lo")
        _sh("ip", "netns", "exec", ns["P"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for side, (lan, wan_ip, p_ip) in HOMES.items():
            router, home = ns[f"R{side}"], ns[f"H{side}"]
            wan, p_if, lan_if, home_if = (f"w{side}{tag}", f"p{side}{tag}", f"l{side}{tag}", f"h{side}{tag}")
            for a, b, a_ns, b_ns in ((p_if, wan, ns["P"], router), (lan_if, home_if, router, home)):
                _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                _sh("ip", "link", "set", a, "netns", a_ns)
                _sh("ip", "link", "set", b, "netns", b_ns)
            for n, dev, addr in ((ns["P"], p_if, f"{p_ip}/24"), (router, wan, f"{wan_ip}/24"),
                                 (router, lan_if, f"{lan}.1/24"), (home, home_if, f"{lan}.2/24")):
                _sh("ip", "-n", n, "addr", "add", addr, "dev", dev)
                _sh("ip", "-n", n, "link", "set", dev, "up")
            _sh("ip", "-n", router, "route", "add", "default", "via", p_ip)
            _sh("ip", "-n", home, "route", "add", "default", "via", f"{lan}.1")
            _sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            subprocess.run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=NFT_ROUTER.format(
                wan=wan, lan=lan_if), check=True, capture_output=True, text=True, timeout=30)
    except (subprocess.CalledProcessError, OSError) as e:
        _del_namespaces(made)
        pytest.skip(f"cannot build namespaces with a NAT here: {getattr(e, 'stderr', '') or e}")
    try:
        _check_nat(ns)
        yield ns
    finally:
        _del_namespaces(made)


def _check_nat(ns: dict) -> None:
    """The NATs do what the tests rely on: homes reach the relay's address and are seen there as their router's
    WAN address; nothing reaches a home from outside, neither its LAN address nor its router's WAN address."""
    echo = subprocess.Popen(["ip", "netns", "exec", ns["P"], sys.executable, "-c", ECHO_PEER, RELAY_IP, "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert echo.stdout.readline().strip() == "ready"
        for side in HOMES:
            assert _tcp_reachable(ns[f"H{side}"], f"/ip4/{RELAY_IP}/tcp/9"), f"H{side} cannot reach the relay"
            assert echo.stdout.readline().strip() == HOMES[side][1], f"H{side} is not masqueraded"
    finally:
        stop(echo)
    listeners = [subprocess.Popen(["ip", "netns", "exec", ns[f"H{side}"], sys.executable, "-c", ECHO_PEER,
                                   f"{HOMES[side][0]}.2", "9"], stdout=subprocess.PIPE, text=True)
                 for side in HOMES]
    try:
        for p in listeners:
            assert p.stdout.readline().strip() == "ready"
        for src, dst in (("HA", "B"), ("HB", "A"), ("P", "A"), ("P", "B")):
            for addr in (f"{HOMES[dst][0]}.2", HOMES[dst][1]):
                assert not _tcp_reachable(ns[src], f"/ip4/{addr}/tcp/9"), f"{src} can dial into home {dst} at {addr}"
    finally:
        for p in listeners:
            stop(p)


def _start_libp2p_swarm(nat, start, tmp_path, *extra: str):
    """A relay in P and one `sapo run` in each home (given only the relay's address); their node.json."""
    relay_dir = tmp_path / "relay"
    start(nat["P"], "bootstrap", "--transport", "libp2p", "--relay", "--run-dir", str(relay_dir),
          "--listen", f"/ip4/{RELAY_IP}/tcp/0", "--set", "swarm.swarm_id=relay-only",
          "--set", "swarm.transport.mdns=false", name="relay")
    relay = wait_for(lambda: _node_json(relay_dir), 60, what="relay node.json")["addrs"][0]
    dirs = {side: tmp_path / side for side in HOMES}
    for i, (side, (lan, _, _)) in enumerate(HOMES.items()):
        start(nat[f"H{side}"], "run", "--transport", "libp2p", "--run-dir", str(dirs[side]), "--peers", relay,
              "--set", f"swarm.transport.listen=[/ip4/{lan}.2/tcp/0]", "--set", f"seed={i}",
              "--set", "swarm.transport.relay.enabled=true", *NODE, *extra, name=side)
    info = {side: wait_for(lambda d=d: _node_json(d), 120, what=f"{side}/node.json") for side, d in dirs.items()}
    for side in HOMES:
        circuit = [x for x in info[side]["addrs"] if "/p2p-circuit/" in x]
        assert circuit == [f"{relay}/p2p-circuit/p2p/{info[side]['peer_id']}"], info[side]["addrs"]
    return relay, dirs, info


def _port(addrs: list[str]) -> int:
    direct = next(a for a in addrs if "/p2p-circuit/" not in a)
    parts = direct.split("/")
    return int(parts[parts.index("tcp") + 1])


def _established(ns: str) -> list[tuple[str, str]]:
    """(local, peer) of the established TCP connections in namespace ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return [(row.split()[-2], row.split()[-1]) for row in out.splitlines() if row.strip()]


def _diagnosis(nat, dirs, tmp_path) -> str:
    """What a failed wait shows: each node's swarm counters, its TCP connections and the tail of its log."""
    out = []
    for side, d in dirs.items():
        rows = metrics(d)
        last = {k: rows[-1].get(k) for k in ("round", "admitted", "peers", "published", "transport_events")} if rows \
            else {}
        log = (tmp_path / f"{side}.log").read_text(errors="replace").splitlines()[-15:]
        out.append(f"{side}: {last} tcp={_established(nat[f'H{side}'])} log tail:\n" + "\n".join(log))
    return "\n".join(out)


def _admitted(run_dir) -> int:
    rows = metrics(run_dir)
    return rows[-1]["admitted"] if rows else 0


@needs_libp2p
def test_nated_nodes_share_rollouts_through_the_relay(nat, ns_procs, tmp_path):
    relay, dirs, info = _start_libp2p_swarm(nat, ns_procs, tmp_path, "--set", "swarm.transport.relay.hole_punch=false")
    wait_for(lambda: all(any(r["external_groups"] > 0 for r in metrics(d)) for d in dirs.values()), 240,
             interval=1.0, what="external groups on both NATed nodes")
    for side, d in dirs.items():
        last = metrics(d)[-1]
        assert last["admitted"] > 0 and last["rejected"] == {}, (side, last)
    # the only TCP connections the homes have lead to the relay: the rollouts came through it
    for side in HOMES:
        peers = {peer for _, peer in _established(nat[f"H{side}"])}
        assert peers and all(p.startswith(f"{RELAY_IP}:") for p in peers), (side, peers)
    assert all(p.poll() is None for p in ns_procs.procs.values())


@needs_libp2p
def test_hole_punching_makes_the_link_direct_and_survives_the_relay(nat, ns_procs, tmp_path):
    relay, dirs, info = _start_libp2p_swarm(nat, ns_procs, tmp_path)  # relay.hole_punch is on by default
    port = {side: _port(info[side]["addrs"]) for side in HOMES}
    # DCUtR: both dial each other's router WAN address from their own listen port at once; each NAT maps the
    # outgoing SYN keeping the port, so the other's SYN arrives as a reply to it (TCP simultaneous open).
    direct = (f"{HOMES['A'][0]}.2:{port['A']}", f"{HOMES['B'][1]}:{port['B']}")
    t0 = time.monotonic()
    wait_for(lambda: direct in _established(nat["HA"]), 180, interval=0.5, what=f"a direct connection {direct}")
    punched_s = time.monotonic() - t0
    assert (f"{HOMES['B'][0]}.2:{port['B']}", f"{HOMES['A'][1]}:{port['A']}") in _established(nat["HB"])
    # A TCP connection is not yet a libp2p one (security and muxer upgrade): stopping the relay before both nodes
    # hold the upgraded direct connection cut them off for good once in CI (both left with no TCP connection).
    wait_for(lambda: all((metrics(d) or [{}])[-1].get("transport_events", {}).get("direct_link", 0) >= 1
                         for d in dirs.values()), 60, interval=0.5, what="a direct libp2p link on both nodes")

    # Without the relay, only the direct connection can carry rollouts.
    ns_procs.procs["relay"].terminate()
    ns_procs.procs["relay"].wait(20)
    before = {side: _admitted(d) for side, d in dirs.items()}
    try:
        wait_for(lambda: all(_admitted(d) > before[side] for side, d in dirs.items()), 180, interval=1.0,
                 what=f"rollouts admitted after the relay stopped (before: {before})")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; {_diagnosis(nat, dirs, tmp_path)}") from None
    for side, d in dirs.items():
        assert metrics(d)[-1]["rejected"] == {}, side
    assert all(p.poll() is None for name, p in ns_procs.procs.items() if name != "relay")
    print(f"direct connection {punched_s:.1f} s after both nodes were up; admitted before/after the relay "
          f"stopped: {before} / { {s: _admitted(d) for s, d in dirs.items()} }")
