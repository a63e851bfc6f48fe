"""py-libp2p backend: one gossipsub topic per swarm, payloads chunked below the frame limit.

    t = Libp2pTransport(Libp2pTransportConfig(), identity, swarm_id="demo", initial_peers=[])
    t.start(); print(t.addresses())          # pass one of these to another node's initial_peers
    t.publish(b"envelope bytes"); t.incoming() -> [Received(payload, sender=<author peer id>, received_at)]
    t.stop()

How it works
------------
* A py-libp2p host (TCP, noise, yamux) whose key pair is built from the node's Ed25519 seed, so the host's peer
  id == ``identity.peer_id`` == envelope signer (checked in ``start``). trio runs on its own daemon thread; the
  public methods are synchronous and hop onto it with ``trio.from_thread`` (a bounded, lock-protected ``Inbox``
  in between).
* Gossipsub on ``sapo/<swarm_id>/rollouts/1`` with strict signing: every gossip message carries its author's
  ``from`` and signature, verified by each receiver, so ``Received.sender`` is the author, never the neighbour
  that relayed it. Own messages are filtered out.
* Frames: every payload is cut into chunks (``libp2p_frames``) so that no gossip frame exceeds
  ``cfg.max_frame_bytes`` (60,000), reassembled per (author, message id) with bounded buffers and a timeout,
  and checked against the sha256 in every chunk header. (DESIGN.md recorded receivers crashing on frames above
  ~64 KB; with 0.8.1 as installed here single 900 KB messages passed between two hosts, but chunking keeps every
  frame far from the stock 1 MB inbound cap and from the measured failure.)
* Hostile frames: stock ``Pubsub.stream_handler`` catches stream errors, but ``rpc_pb2.RPC.ParseFromString`` on
  garbage raises protobuf ``DecodeError``, which escaped the handler into the swarm's task group and took the
  host down. ``_GuardedPubsub`` catches every exception of one peer's read loop, resets only that stream and
  blacklists the peer for ``PENALTY_S`` (pubsub blacklist: connection torn down, its messages dropped). A
  length prefix above the inbound cap (``MessageTooLarge``) is refused before the body is read.
* Discovery: the initial peers (``BootstrapError`` naming them when none answers), mDNS (``cfg.mdns``; zeroconf,
  the peers it announces are dialled by a periodic task) and a Kademlia DHT in server mode with random walk
  (``cfg.dht``) whose routing-table peers are dialled too, so the mesh grows beyond the bootstrap list.

* Relay (``libp2p_relay``): ``cfg.relay.hop`` makes this host a circuit relay v2 for others (``sapo bootstrap
  --relay``); ``cfg.relay.enabled`` reserves a slot on the relays (``relay.relays``, else the initial peers that
  accept), adds ``<relay>/p2p-circuit/p2p/<me>`` to ``addresses()`` and to what identify announces, and dials peers
  that have only circuit addresses (given in ``initial_peers`` or learnt from the DHT) through their relay;
  ``cfg.relay.hole_punch`` then tries to replace each relayed connection with a direct one (DCUtR).
* QUIC: ``/ip4/.../udp/N/quic-v1`` listen addresses turn on py-libp2p's QUIC transport (TCP and QUIC may be mixed).

Limits: two NATed peers stay on the relayed path where hole punching fails (NATs that do not keep the source
port; only TCP hole punching is tested). hivemind and py-libp2p cannot be imported in one process (both
register the protobuf package ``crypto.pb``): a node uses one backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import multiaddr  # noqa: E402
import trio  # noqa: E402
from libp2p import new_host  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub  # noqa: E402
from libp2p.pubsub import pubsub as _pubsub_module  # noqa: E402
from libp2p.pubsub.pubsub import Pubsub  # noqa: E402
from libp2p.pubsub.rpc_queue import RpcQueue  # noqa: E402
from libp2p.exceptions import ParseError  # noqa: E402
from libp2p.io.exceptions import IncompleteReadError  # noqa: E402
from libp2p.network.stream.exceptions import StreamError  # noqa: E402
from libp2p.tools.anyio_service import background_trio_service  # noqa: E402

from node.config import Libp2pTransportConfig  # noqa: E402
from swarm.identity import Identity  # noqa: E402
from swarm.transport.base import (  # noqa: E402
    BootstrapError, Inbox, Received, Transport, TransportError, TransportStats)
from swarm.transport.libp2p_frames import MAX_PAYLOAD_BYTES, FrameError, Reassembler, split  # noqa: E402
from swarm.transport.libp2p_relay import RelayPart, is_circuit, patch_host_addrs  # noqa: E402

log = logging.getLogger(__name__)
if "LIBP2P_DEBUG" not in os.environ:
    # py-libp2p logs every dropped stream and peer at WARNING (stats() counts ours); its import sets its own
    # levels, so this comes after the imports.
    logging.getLogger("libp2p").setLevel(logging.ERROR)

PENALTY_S = 60.0
"""How long a peer that sent a frame we could not parse stays blacklisted."""
CONNECT_TIMEOUT_S = 10.0
DISCOVERY_INTERVAL_S = 2.0
MAX_DIALS_PER_ROUND = 8
HEAL_GRACE_S = 6.0
HEAL_BACKOFF_MAX_S = 300.0
"""``_heal_pubsub`` repairs a peer's pubsub state once it has been broken for HEAL_GRACE_S; then again after 2x,
4x, ... the grace, up to HEAL_BACKOFF_MAX_S."""
MAX_INBOUND_RPC_BYTES = 1024 * 1024
"""Stock py-libp2p cap on one inbound pubsub RPC; our frames stay under cfg.max_frame_bytes, honest RPCs that
batch control messages stay far below this."""


OUTBOUND_QUEUE_RPCS = 256
"""Per-peer outbound RPC queue. py-libp2p's default (32, as go-libp2p) drops RPCs silently when full: one 1 MB
payload is 18 frames (each with its own RPCs) and lost its last chunks. 256 x 60 KB bounds it at ~15 MB per peer;
our own publishing also waits for room (``_wait_for_room``), so this slack is for relayed frames."""


_STREAM_ENDS = (StreamError, ParseError, IncompleteReadError)
"""How a peer's pubsub stream ends normally (closed, reset, connection gone); anything else is a bad frame."""


class _Overdue:
    """Which peers have been in some bad state long enough to act on: ``due`` is True once a peer has been bad
    for HEAL_GRACE_S, then again after 2x, 4x, ... that, up to HEAL_BACKOFF_MAX_S; a good report resets it."""

    def __init__(self):
        self._next: dict[ID, tuple[float, float]] = {}  # peer -> (when to act next, backoff after that)

    def due(self, pid: ID, bad: bool, now: float) -> bool:
        if not bad:
            self._next.pop(pid, None)
            return False
        when, backoff = self._next.setdefault(pid, (now + HEAL_GRACE_S, HEAL_GRACE_S))
        if now < when:
            return False
        self._next[pid] = (now + backoff, min(2 * backoff, HEAL_BACKOFF_MAX_S))
        return True

    def forget_all_but(self, pids: set) -> None:
        for pid in [p for p in self._next if p not in pids]:
            del self._next[pid]


class _RoomyRpcQueue(RpcQueue):
    def __init__(self, max_size: int = OUTBOUND_QUEUE_RPCS, **kw):
        super().__init__(max_size=max_size, **kw)


# pubsub.py builds each peer's queue as ``RpcQueue()`` from its module globals; this is the one hook for its size.
_pubsub_module.RpcQueue = _RoomyRpcQueue


class _GuardedPubsub(Pubsub):
    """Pubsub whose per-stream read loop cannot take the host down: any exception while reading or parsing one
    peer's RPCs closes that stream and blacklists the peer for ``PENALTY_S``."""

    on_bad_peer = None  # set by the transport: callable(peer_id: ID, reason: str)
    on_message = None  # set by the transport: callable(msg: rpc_pb2.Message), runs synchronously on the trio thread

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._inbound: dict[ID, object] = {}  # peer -> its newest inbound pubsub stream still being read
        self._reset_by_us: set = set()  # inbound streams we reset on purpose (``reset_inbound``): not the peer's fault

    @property
    def inbound(self) -> dict:
        return self._inbound

    async def reset_inbound(self, peer_id: ID) -> None:
        """Reset the peer's inbound stream: its next write fails, so it re-registers with us and re-announces its
        topics on the new stream."""
        stream = self._inbound.get(peer_id)
        if stream is None:
            return
        self._reset_by_us.add(stream)
        try:
            await stream.reset()
        except Exception as e:  # noqa: BLE001 - the stream may already be gone
            log.debug("reset of %s's inbound stream failed: %r", peer_id, e)

    def notify_subscriptions(self, publish_message) -> None:
        # Stock pubsub hands messages to a 32-slot channel and drops them silently when it is full, which lost
        # chunks of 1 MB payloads (18 frames arriving back to back). Reassembly is cheap and synchronous, so the
        # transport takes each validated message right here instead.
        if self.on_message is not None:
            self.on_message(publish_message)

    async def stream_handler(self, stream) -> None:
        # Stock handler plus: any exception (not only stream/parse errors) ends just this peer's stream and
        # penalises the peer; and the peer's subscriptions are forgotten only when its *current* inbound stream
        # ends (``_inbound``). A peer announces its topics once per stream, on open. When a peer moves to a new
        # connection (DCUtR: relayed -> direct, then the relayed one is closed), its new stream's announcement can
        # arrive before the old stream's end is noticed; stock pubsub then forgets the topics just announced and
        # never sends that peer anything again (measured: one direction of a hole-punched pair went silent).
        peer_id = stream.muxed_conn.peer_id
        self._inbound[peer_id] = stream
        try:
            await self.continuously_read_stream(stream)
        except trio.Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - hostile bytes reach protobuf, which raises DecodeError & co
            log.debug("pubsub stream from %s failed: %r", peer_id, e)
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001 - the stream may already be gone
                pass
            if self._inbound.get(peer_id) is stream:
                del self._inbound[peer_id]
            self._handle_dead_peer(peer_id)
            if not isinstance(e, _STREAM_ENDS) and stream not in self._reset_by_us and self.on_bad_peer is not None:
                self.on_bad_peer(peer_id, type(e).__name__)
        finally:
            self._reset_by_us.discard(stream)
            if self._inbound.get(peer_id) is stream:
                del self._inbound[peer_id]

    def _forget_all_subscriptions(self, peer_id: ID) -> None:
        if peer_id in self._inbound and peer_id not in self.blacklisted_peers:
            return  # a live (newer) inbound stream carries the peer's current subscriptions
        super()._forget_all_subscriptions(peer_id)


def _first_transport_error(e: BaseException) -> TransportError | None:
    """Our own BootstrapError/TransportError from inside the (nested) exception groups of trio nurseries."""
    if isinstance(e, TransportError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = _first_transport_error(inner)
        if found is not None:
            return found
    return None


class Libp2pTransport(Transport):
    def __init__(self, cfg: Libp2pTransportConfig, identity: Identity, swarm_id: str, initial_peers: list[str]):
        if cfg.relay.enabled and not (cfg.relay.relays or initial_peers):
            raise TransportError("swarm.transport.relay.enabled needs a relay to reserve a slot on: set "
                                 "swarm.transport.relay.relays (or --peers) to a `sapo bootstrap --transport libp2p "
                                 "--relay` address")
        if any(is_circuit(a) for a in initial_peers) and not cfg.relay.enabled:
            raise TransportError("a /p2p-circuit address in initial peers is dialled through its relay: set "
                                 "swarm.transport.relay.enabled: true")
        self.cfg = cfg
        self.identity = identity
        self.swarm_id = swarm_id
        self.initial_peers = list(initial_peers)
        self.topic = f"sapo/{swarm_id}/rollouts/1"

        self._lock = threading.Lock()
        self._stats = TransportStats()
        self._inbox = Inbox(self._lock, self._stats)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._addresses: list[str] = []
        self._relay_addresses: list[str] = []
        self._started = False
        self._stopped = False

        # trio-thread state
        self._host = None
        self._pubsub: _GuardedPubsub | None = None
        self._dht = None
        self._relay: RelayPart | None = None
        self._stop_event: trio.Event | None = None
        self._out_send = None
        self._penalised: dict[ID, float] = {}
        self._no_stream, self._no_topics = _Overdue(), _Overdue()  # peers needing _heal_pubsub
        self._reasm = Reassembler()
        self._my_id = b""

    # ------------------------------------------------------------------ sync API
    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(target=self._run, name=f"libp2p-transport-{self.peer_id[-6:]}", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            self.stop()
            raise TransportError("libp2p transport did not start within 60 s")
        if self._error is not None:
            self._thread.join(15)
            self._stopped = True
            err = self._error
            raise err if isinstance(err, TransportError) else TransportError(f"libp2p start failed: {err!r}") from err

    def publish(self, payload: bytes) -> None:
        if not self._started or self._stopped or self._token is None:
            raise TransportError("transport is not running; call start() first")
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise TransportError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:  # blocks only while 64 payloads are already queued (backpressure, not loss)
            trio.from_thread.run(self._out_send.send, payload, trio_token=self._token)
        except trio.RunFinishedError:
            raise TransportError("libp2p transport stopped") from None

    def incoming(self, max_items: int | None = None) -> list[Received]:
        return self._inbox.drain(max_items)

    def peers(self) -> list[str]:
        if not self._started or self._stopped or self._token is None:
            return []
        try:
            return trio.from_thread.run_sync(self._peers, trio_token=self._token)
        except trio.RunFinishedError:
            return []

    def addresses(self) -> list[str]:
        """Direct listen addresses, then ``/p2p-circuit`` addresses through the relays that hold a reservation."""
        return list(self._addresses) + list(self._relay_addresses)

    def stats(self) -> TransportStats:
        with self._lock:
            s = self._stats
            errors = dict(s.errors)
            for reason, n in self._reasm.dropped.items():
                if n:
                    errors[f"reassembly_{reason}"] = n
            return TransportStats(s.bytes_in, s.bytes_out, s.messages_in, s.messages_out, errors)

    def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        if self._thread is not None and self._thread.is_alive() and self._token is not None:
            try:
                trio.from_thread.run_sync(self._stop_event.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(20)
            if self._thread.is_alive():
                log.warning("libp2p transport thread did not exit within 20 s")

    # ------------------------------------------------------------------ internals
    def _count_error(self, kind: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._stats.errors[kind] = self._stats.errors.get(kind, 0) + n

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # noqa: BLE001 - reported to start() or logged; the thread must end cleanly
            if not self._ready.is_set():
                self._error = _first_transport_error(e) or e
            else:
                log.error("libp2p transport loop died: %r", e)
                self._count_error("loop_died")
        finally:
            self._ready.set()

    def _listen_addrs(self) -> list[multiaddr.Multiaddr]:
        try:
            return [multiaddr.Multiaddr(a) for a in self.cfg.listen]
        except Exception as e:
            raise TransportError(f"swarm.transport.listen: bad multiaddr in {self.cfg.listen}: {e}") from e

    def _bootstrap_infos(self):
        infos = []
        for addr in self.initial_peers:
            if is_circuit(addr):  # dialled through its relay in _connect_bootstrap
                infos.append((addr, None))
                continue
            try:
                infos.append((addr, info_from_p2p_addr(multiaddr.Multiaddr(addr))))
            except Exception as e:
                raise BootstrapError(f"initial peer {addr!r} is not a multiaddr ending in /p2p/<peer id> ({e}); "
                                     "copy a full address from the other node's addresses()") from e
        return infos

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        listen = self._listen_addrs()
        infos = self._bootstrap_infos()
        key_pair = create_new_key_pair(self.identity.private_bytes)
        use_quic = any("/quic" in a for a in self.cfg.listen)
        host = new_host(key_pair=key_pair, listen_addrs=listen, enable_mDNS=self.cfg.mdns, enable_quic=use_quic,
                        announce_addrs=[multiaddr.Multiaddr(a) for a in self.cfg.announce] or None)
        if host.get_id().to_base58() != self.peer_id:
            raise TransportError(f"libp2p host took peer id {host.get_id()} instead of {self.peer_id}")
        router = GossipSub([PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4, degree_high=12,
                           heartbeat_interval=self.cfg.heartbeat_s, heartbeat_initial_delay=0.1,
                           # chunks of one 1 MB payload are ~18 messages: the per-topic rate cap (10/s) would
                           # drop them; admission rate-limits envelopes per peer instead.
                           spam_protection_enabled=False,
                           # all peers of a local swarm share 127.0.0.1: IP-diversity pruning would starve it.
                           eclipse_protection_enabled=False)
        if self.cfg.relay.enabled or self.cfg.relay.hop:
            try:
                self._relay = RelayPart(host, self.cfg.relay, self.cfg.relay.relays or self.initial_peers,
                                        self._count_error)
            except ValueError as e:
                raise TransportError(f"swarm.transport.relay.relays: {e}") from e
            if self.cfg.relay.enabled:
                patch_host_addrs(host, self._relay.addresses)  # identify announces our circuit addresses too
        pubsub = _GuardedPubsub(host, router, strict_signing=True, max_inbound_rpc_size=MAX_INBOUND_RPC_BYTES)
        pubsub.on_bad_peer = self._penalise
        pubsub.on_message = self._on_message
        self._host, self._pubsub, self._my_id = host, pubsub, host.get_id().to_bytes()
        out_send, out_recv = trio.open_memory_channel(64)
        self._out_send = out_send
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            if self._relay is not None:
                await stack.enter_async_context(background_trio_service(self._relay.protocol))
                if self._relay.dcutr is not None:
                    await stack.enter_async_context(background_trio_service(self._relay.dcutr))
            await pubsub.wait_until_ready()
            await pubsub.subscribe(self.topic)
            self._addresses = [str(a) for a in host.get_addrs() if not is_circuit(a)]
            if self.cfg.relay.enabled:
                await self._reserve_relays()
            if infos:
                await self._connect_bootstrap(infos)
            dht_cm = self._dht_service() if self.cfg.dht else None
            async with trio.open_nursery() as nursery:
                if dht_cm is not None:
                    await nursery.start(self._run_dht)
                nursery.start_soon(self._send_loop, out_recv)
                nursery.start_soon(self._maintenance_loop)
                if self.cfg.relay.enabled:
                    nursery.start_soon(self._relay.keep_reservations)
                self._ready.set()
                await self._stop_event.wait()
                nursery.cancel_scope.cancel()
        pubsub.seen_messages.stop()  # py-libp2p's timed cache runs its own sweeper thread and never stops it

    async def _connect_bootstrap(self, infos) -> None:
        ok, failed = 0, []

        async def dial(addr, info):
            nonlocal ok
            if info is None:  # a /p2p-circuit address: through its relay
                if await self._relay.dial(addr):
                    ok += 1
                else:
                    failed.append(f"{addr} (no circuit through the relay: is the peer's reservation live?)")
                return
            with trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    await self._host.connect(info)
                    ok += 1
                    return
                except Exception as e:  # noqa: BLE001 - reported below with the address
                    failed.append(f"{addr} ({type(e).__name__}: {e})")
                    return
            failed.append(f"{addr} (timed out after {CONNECT_TIMEOUT_S} s)")

        async with trio.open_nursery() as n:
            for addr, info in infos:
                n.start_soon(dial, addr, info)
        if not ok:
            raise BootstrapError(f"none of the initial peers could be reached: {'; '.join(failed)}")

    async def _reserve_relays(self) -> None:
        """Reserve a slot on the relays before reporting ready, so ``addresses()`` already has circuit addresses.
        With ``relay.relays`` set, none reserving is an error; with relays taken from the initial peers, those
        that run no relay are skipped and none reserving is an error too."""
        n = await self._relay.reserve_all()
        self._relay_addresses = self._relay.addresses()
        if n == 0:
            detail = "; ".join(f"{a} ({why})" for a, why in self._relay.failures.items()) or "no relay candidates"
            raise BootstrapError(f"no relay reservation: {detail}. Start a relay with `sapo bootstrap --transport "
                                 "libp2p --relay` and pass its address in swarm.transport.relay.relays or --peers")

    def _dht_service(self):
        try:
            from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        except ImportError as e:
            log.warning("Kademlia DHT unavailable in this py-libp2p: %r", e)
            return None
        self._dht = KadDHT(self._host, DHTMode.SERVER, enable_random_walk=True)
        return self._dht

    async def _run_dht(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with background_trio_service(self._dht):
                task_status.started()
                await trio.sleep_forever()
        except Exception as e:  # noqa: BLE001 - discovery is optional: gossip keeps working without it
            log.warning("Kademlia DHT stopped: %r", e)
            self._count_error("dht_failed")
            self._dht = None
            try:
                task_status.started()
            except RuntimeError:
                pass

    def _penalise(self, peer_id: ID, reason: str) -> None:
        self._count_error(f"bad_frame_{reason}")
        self._penalised[peer_id] = time.monotonic() + PENALTY_S
        self._pubsub.add_to_blacklist(peer_id)

    def _peers(self) -> list[str]:
        ids = {p.to_base58() for p in self._pubsub.peer_topics.get(self.topic, ())}
        ids.discard(self.peer_id)
        return sorted(ids)

    async def _wait_for_room(self) -> None:
        """Backpressure: publish the next frame only when every peer's outbound queue is at most half full
        (up to 5 s, then publish anyway: a stuck peer must not stall the swarm)."""
        with trio.move_on_after(5):
            while any(len(q) > OUTBOUND_QUEUE_RPCS // 2 for q in list(self._pubsub.peer_queues.values())):
                await trio.sleep(0.005)

    async def _send_loop(self, out_recv) -> None:
        async for payload in out_recv:
            frames = split(payload, self.cfg.max_frame_bytes)
            try:
                for f in frames:
                    await self._wait_for_room()
                    await self._pubsub.publish(self.topic, f)
            except Exception as e:  # noqa: BLE001 - a failed publish is counted, the loop goes on
                log.debug("publish failed: %r", e)
                self._count_error("publish_failed")
                continue
            with self._lock:
                self._stats.messages_out += 1
                self._stats.bytes_out += sum(len(f) for f in frames)

    def _on_message(self, msg) -> None:
        """A gossip message that passed strict-signature validation; ``from`` is its author."""
        if msg.from_id == self._my_id or self.topic not in msg.topicIDs:
            return
        try:
            author = ID(msg.from_id).to_base58()
        except Exception:  # noqa: BLE001 - strict signing already checked it; be defensive anyway
            self._count_error("bad_author")
            return
        try:
            payload = self._reasm.add(author, msg.data)
        except FrameError as e:
            self._count_error(f"frame_{e.reason}")
            return
        if payload is not None:
            self._inbox.put(payload, author)

    async def _maintenance_loop(self) -> None:
        """Expire partial messages and penalties; dial peers found by mDNS or the DHT."""
        while True:
            await trio.sleep(DISCOVERY_INTERVAL_S)
            self._reasm.expire()
            now = time.monotonic()
            for peer, until in list(self._penalised.items()):
                if until < now:
                    del self._penalised[peer]
                    self._pubsub.remove_from_blacklist(peer)
            if self._relay is not None and self.cfg.relay.enabled:
                self._relay_addresses = self._relay.addresses()
            try:
                if self._relay is not None:
                    self._count_error("direct_link", await self._relay.new_direct_links())
                await self._heal_pubsub(now)
            except Exception as e:  # noqa: BLE001 - a repair that fails is retried on the next tick
                log.debug("pubsub repair failed: %r", e)
                self._count_error("pubsub_repair_failed")
            try:
                await self._dial_discovered()
            except Exception as e:  # noqa: BLE001 - discovery is best effort
                log.debug("discovery round failed: %r", e)
                self._count_error("discovery_failed")

    async def _heal_pubsub(self, now: float) -> None:
        """Keep gossip flowing both ways with every connected peer when py-libp2p's own bookkeeping slips.

        py-libp2p registers a peer once per connection event and gives up for good on errors other than
        SwarmException/StreamClosed. When a peer's connections change under it (a hole punch makes the link
        direct, then the relay goes away) our stream to it can die on the old connection while the registration
        on the new one fails that way; or the peer's topic announcement can be lost in the same shuffle. Either
        way nothing retries, and that peer never hears from us again (seen once in CI: no rollout admitted for
        180 s after the relay stopped). So, for peers in such a state for HEAL_GRACE_S (then with a doubling
        backoff, for peers that just do not speak pubsub or our topic):
        * our stream's connection closed: drop it (py-libp2p re-registers on a live connection);
        * connected without an outbound stream: re-register (``pubsub_stream_reopened``);
        * registered but no topic known: reset its inbound stream, which makes it re-register and so re-announce
          its topics (``pubsub_topics_requested``)."""
        ps = self._pubsub
        for pid, stream in list(ps.peers.items()):
            if getattr(getattr(stream, "muxed_conn", None), "is_closed", False):
                self._count_error("pubsub_stream_stale")
                ps._handle_dead_peer(pid)  # noqa: SLF001 - re-registers on a live connection when there is one
        connected = set(self._host.get_connected_peers())
        subscribed = set().union(*ps.peer_topics.values())
        for pid in connected:
            if pid in self._penalised or ps.is_peer_blacklisted(pid):
                continue
            if self._no_stream.due(pid, pid not in ps.peers, now):
                self._count_error("pubsub_stream_reopened")
                ps._schedule_peer_stream_retry(pid)  # noqa: SLF001 - the entry point that runs one retry per peer
            if self._no_topics.due(pid, pid in ps.peers and pid not in subscribed and pid in ps.inbound, now):
                self._count_error("pubsub_topics_requested")
                await ps.reset_inbound(pid)
        self._no_stream.forget_all_but(connected)
        self._no_topics.forget_all_but(connected)

    def _discovered(self) -> set[ID]:
        found: set[ID] = set()
        mdns = getattr(self._host, "mDNS", None)
        if mdns is not None:
            found |= {pid for pid, _ in list(mdns.listener.discovered_services.values())}
        if self._dht is not None:
            try:
                found |= set(self._dht.routing_table.get_peer_ids())
            except Exception:  # noqa: BLE001
                pass
        return found

    async def _dial_discovered(self) -> None:
        me = self._host.get_id()
        connected = set(self._host.get_connected_peers())
        todo = [p for p in self._discovered() if p != me and p not in connected and p not in self._penalised]
        if not todo:
            return
        store = self._host.get_peerstore()

        async def dial(pid: ID) -> None:
            with trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    await self._host.connect(store.peer_info(pid))
                    return
                except Exception as e:  # noqa: BLE001 - an unreachable announcement is normal
                    log.debug("dial %s failed: %r", pid, e)
            if self._relay is not None and self.cfg.relay.enabled:
                # Behind NAT (or we are): the peer's direct addresses failed; try its /p2p-circuit ones.
                await self._relay.dial_peer(pid)

        async with trio.open_nursery() as n:
            for pid in todo[:MAX_DIALS_PER_ROUND]:
                n.start_soon(dial, pid)
