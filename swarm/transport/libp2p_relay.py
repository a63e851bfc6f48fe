"""Circuit relay v2 for the libp2p transport: the relay (hop) service, reservations, dials through a relay.

    relay = RelayPart(host, cfg.relay, candidates=["/ip4/R/tcp/31337/p2p/12D3KooR..."], count_error=...)
    async with background_trio_service(relay.protocol):  # STOP handler (+ HOP when cfg.hop)
        await relay.reserve_all()        # -> addresses(): "/ip4/R/tcp/31337/p2p/12D3KooR.../p2p-circuit/p2p/<me>"
        nursery.start_soon(relay.keep_reservations)
        await relay.dial("/ip4/R/.../p2p-circuit/p2p/<peer>")  # or relay.dial_peer(peer_id) from the peerstore

Roles (``RelayConfig`` in node/config.py):
* ``hop``: this host relays for others (``sapo bootstrap --relay``). Limits: ``HOP_LIMITS`` (py-libp2p's defaults,
  4 reservations and 1 GB / 1 h per circuit, are too small for a swarm hub; circuits here have no time cap).
* ``enabled``: this host reserves a slot on each reachable relay candidate (``relays``, else the initial peers that
  accept), accepts relayed connections (STOP), dials ``/p2p-circuit`` addresses, and advertises its circuit
  addresses through identify so that peers that learn it from the DHT can reach it.

py-libp2p 0.8.1 specifics worked around here:
* The swarm drops every ``/p2p-circuit`` address when it dials (``Swarm.dial_peer``: "this node has no relay
  transport"), even with a relay transport built; so circuits are dialled with ``CircuitV2Transport.dial``
  directly (it upgrades the stream and registers the connection with the swarm, where pubsub sees it).
* ``BasicHost.get_addrs`` strips the first ``/p2p/`` component of each address and appends its own, which turns a
  circuit address into a wrong direct one; the circuit addresses are appended after it (``patch_host_addrs``).
* Identify runs when a connection opens, which for the relay is before the reservation exists: after each new
  reservation an identify push tells connected peers (the relay first) our circuit address.
* ``CircuitV2Transport`` with the CLIENT role makes a reservation on the relay before every dial; ours has only
  STOP, and reservations are made and renewed by ``keep_reservations`` (re-made when the relay connection drops,
  e.g. after the relay restarted and forgot them).
* ``hole_punch`` (with ``enabled``): py-libp2p's DCUtR service. Every 2 s it looks for relayed connections and
  tries (after a plain direct dial) a hole punch: addresses exchanged over the relayed stream (the relay's identify
  tells each side its NAT's public address; the port is predicted as our listen port), then both sides dial from
  their listen port (SO_REUSEPORT) at once. On success the relayed connection is closed after 60 s; pubsub
  re-opens its stream on the direct one (``_GuardedPubsub`` keeps the subscriptions announced there;
  ``Libp2pTransport._heal_pubsub`` repairs a stream or an announcement lost in the move).
  Measured in tests/integration/test_nat.py behind two nft masquerade NATs.
"""

from __future__ import annotations

import logging
import time

import multiaddr
import trio
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.config import RelayConfig as V2RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport

log = logging.getLogger(__name__)

HOP_LIMITS = RelayLimits(duration=0, data=1 << 50, max_circuit_conns=64, max_reservations=512,
                         reservation_ttl=3600)
"""What a relay of ours grants: duration 0 = no time cap per circuit (py-libp2p default 1 h would cut the gossip
link every hour), no practical data cap (the default 1 GB is a few hours of rollouts), 512 reserved peers."""
RESERVE_CHECK_S = 5.0
"""How often reservations are checked (relay still connected, renewal due)."""
RENEW_BEFORE_S = 600.0
"""Renew a reservation this long before it expires."""
DIAL_TIMEOUT_S = 15.0
CIRCUIT_BACKOFF_S = 10.0
"""After a failed circuit dial to a peer, wait this long before trying it again."""


def is_circuit(addr) -> bool:
    return "/p2p-circuit" in str(addr)


def circuit_addr(relay_addr: str, me: str) -> str:
    """``<relay address ending in /p2p/<relay id>>/p2p-circuit/p2p/<me>``."""
    return f"{relay_addr.rstrip('/')}/p2p-circuit/p2p/{me}"


def patch_host_addrs(host, extra) -> None:
    """Make ``host.get_addrs()`` (what identify announces) also return ``extra()``, a list of multiaddrs."""
    orig = host.get_addrs

    def get_addrs():
        return list(orig()) + [multiaddr.Multiaddr(a) for a in extra()]

    host.get_addrs = get_addrs


class RelayPart:
    """Relay roles of one host; all methods run on the transport's trio thread."""

    def __init__(self, host, cfg, candidates: list[str], count_error):
        self.host = host
        self.cfg = cfg
        self.count_error = count_error
        self.protocol = CircuitV2Protocol(host, limits=HOP_LIMITS, allow_hop=cfg.hop)
        self.circuit = (CircuitV2Transport(host, self.protocol, V2RelayConfig(roles=RelayRole.STOP))
                        if cfg.enabled else None)
        self.dcutr = DCUtRProtocol(host) if cfg.enabled and cfg.hole_punch else None
        self.candidates: list[tuple[str, object]] = []
        for addr in candidates:
            if is_circuit(addr):
                continue
            try:
                self.candidates.append((addr, info_from_p2p_addr(multiaddr.Multiaddr(addr))))
            except Exception as e:  # noqa: BLE001 - config error, named below
                raise ValueError(f"relay address {addr!r} is not a multiaddr ending in /p2p/<peer id> ({e})") from e
        self.reserved: dict[ID, tuple[str, float]] = {}  # relay id -> (relay address, expires at, wall clock)
        self.not_a_relay: set[ID] = set()  # initial peers that refused (no hop service): not asked again
        self.failures: dict[str, str] = {}
        self._backoff: dict[ID, float] = {}
        self._direct: set[ID] = set()  # peers (not our relays) we hold a direct connection to

    # ---------------------------------------------------------------- reachable through relays
    def addresses(self) -> list[str]:
        me = self.host.get_id().to_base58()
        return [circuit_addr(addr, me) for addr, _ in self.reserved.values()]

    async def reserve_all(self) -> int:
        """Try every candidate once (in parallel); the number of relays holding a reservation for us."""
        async with trio.open_nursery() as n:
            for addr, info in self.candidates:
                if info.peer_id not in self.not_a_relay:
                    n.start_soon(self._reserve, addr, info)
        return len(self.reserved)

    async def _reserve(self, addr: str, info) -> None:
        rid = info.peer_id
        # py-libp2p refuses to dial a peer for 60 s after all its addresses failed once (Swarm's negative cache):
        # a relay that restarted within seconds would stay unreachable for a minute. We dial our relays on purpose.
        cache = getattr(self.host.get_network(), "_negative_peer_cache", None)
        if cache is not None:
            cache.evict(str(rid))
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(info)
                stream = await self.host.new_stream(rid, [HOP_PROTOCOL_ID])
                try:
                    ok = await self.circuit._make_reservation(stream, rid)  # noqa: SLF001 - no public one-shot
                finally:
                    await stream.close()
        except Exception as e:  # noqa: BLE001 - unreachable relay or a peer without the hop protocol
            name = type(e).__name__
            if "protocol" in str(e).lower() and "not supported" in str(e).lower():
                self.not_a_relay.add(rid)
                name = "not a relay (no hop protocol)"
            self.failures[addr] = f"{name}: {e}"[:300]
            self.reserved.pop(rid, None)
            self.count_error("relay_reserve_failed")
            return
        if not ok:
            self.failures[addr] = "the relay refused the reservation"
            self.reserved.pop(rid, None)
            self.count_error("relay_reserve_refused")
            return
        expires = float(self.circuit._reservations.get(rid) or time.time() + 3600)  # noqa: SLF001
        new = rid not in self.reserved
        self.reserved[rid] = (addr, expires)
        self.failures.pop(addr, None)
        log.info("reserved a relay slot on %s until %s", rid, time.ctime(expires))
        if new:
            # Identify ran when we connected to the relay, before the reservation existed: without a push the relay
            # (and so everyone who finds us in the DHT through it) would never learn our circuit address.
            try:
                await push_identify_to_peers(self.host)
            except Exception as e:  # noqa: BLE001 - best effort; the next connection's identify carries it too
                log.debug("identify push failed: %r", e)

    async def keep_reservations(self) -> None:
        """Renew before expiry; re-reserve when the relay connection dropped (a restarted relay forgot us)."""
        while True:
            await trio.sleep(RESERVE_CHECK_S)
            connected = set(self.host.get_connected_peers())
            now = time.time()
            due = [(addr, info) for addr, info in self.candidates if info.peer_id not in self.not_a_relay and (
                info.peer_id not in connected or info.peer_id not in self.reserved
                or self.reserved[info.peer_id][1] - now < RENEW_BEFORE_S)]
            for addr, info in due:
                if info.peer_id not in connected:
                    self.reserved.pop(info.peer_id, None)
            if due:
                async with trio.open_nursery() as n:
                    for addr, info in due:
                        n.start_soon(self._reserve, addr, info)

    async def new_direct_links(self) -> int:
        """With hole punching: how many connected peers, relays aside, newly have a direct (upgraded, not relayed)
        connection since the last call: a hole punch that worked, as the swarm sees it (``ss`` only shows TCP)."""
        if self.dcutr is None:
            return 0
        relays = {info.peer_id for _, info in self.candidates}
        connected = set(self.host.get_connected_peers()) - relays
        self._direct &= connected
        new = 0
        for pid in connected - self._direct:
            if await self.dcutr._verify_direct_connection(pid):  # noqa: SLF001 - reads the swarm's connections only
                self._direct.add(pid)
                new += 1
        return new

    # ---------------------------------------------------------------- reaching others through relays
    async def dial(self, addr: str) -> bool:
        """Connect through a relay to ``<relay>/p2p-circuit/p2p/<peer>``; False (counted) on failure."""
        if self.circuit is None:
            return False
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.circuit.dial(multiaddr.Multiaddr(addr))
            return True
        except Exception as e:  # noqa: BLE001 - the peer may have lost its reservation; counted, retried later
            log.debug("circuit dial %s failed: %r", addr, e)
            self.count_error("relay_dial_failed")
            return False

    async def dial_peer(self, pid: ID) -> bool:
        """Try the peer's circuit addresses from the peerstore (learnt from identify / the DHT), with backoff."""
        if self.circuit is None or self._backoff.get(pid, 0) > time.monotonic():
            return False
        try:
            addrs = [str(a) for a in self.host.get_peerstore().addrs(pid) if is_circuit(a)]
        except Exception:  # noqa: BLE001 - unknown peer
            return False
        me = self.host.get_id().to_base58()
        for addr in addrs:
            if f"/p2p/{me}/p2p-circuit" in addr:  # a circuit through ourselves
                continue
            if await self.dial(addr):
                self._backoff.pop(pid, None)
                return True
        if addrs:
            self._backoff[pid] = time.monotonic() + CIRCUIT_BACKOFF_S
        return False
