"""hivemind backend: a signed index in an in-process hivemind DHT, bodies pushed or fetched peer to peer.

    t = HivemindTransport(HivemindTransportConfig(), identity, swarm_id="demo", initial_peers=[])
    t.start(); print(t.addresses())          # pass one of these to another node's initial_peers
    t.publish(b"envelope bytes"); t.incoming() -> [Received(payload, sender=<peer id>, received_at)]
    t.stop()

How it works
------------
* One ``hivemind.p2p.P2P`` (a p2pd child process) and one ``hivemind.dht.node.DHTNode`` run in THIS process on an
  asyncio loop on a daemon thread; the public methods are synchronous and hop onto that loop with timeouts.
  ``hivemind.DHT`` (a forked process behind a pipe) is deliberately not used: values above ~64 KB break that pipe
  (BlockingIOError then EOFError; see DESIGN.md "Transports").
* Identity: the node's Ed25519 key is handed to p2pd (``identity_path``, libp2p-marshalled), so the transport's
  peer id == ``identity.peer_id`` == envelope signer. hivemind's "is this identity already taken" probe only
  understands RSA keys, so it is switched off (``check_if_identity_free=False``).
* Index records (small) live in the DHT: key ``sapo/<swarm>/w/<floor(time / window_s)>``, subkey
  ``"<peer id>/<seq>"`` (one per published message), value ``[seq, size, sha256(payload), published_at]``,
  expiration ``now + record_ttl_s``. ``SignedSubkeyValidator`` wraps every value as msgpack
  ``[inner, signature]`` where the signature is the subkey owner's Ed25519 signature over (key, subkey, inner,
  expiration): nobody can write under another peer's subkey, nor move a record to another key or extend it.
* Bodies (up to ~1.9 MB) never enter the DHT. Small ones ride on the pushed hint (below); otherwise the receiver
  fetches a body once, straight from the publisher, with a hivemind unary P2P call (``sapo/<swarm>/body``). Either
  way it is accepted only if its sha256 matches the signed index entry, so the sender is authenticated end to end
  without trusting the connection.
  Why: a DHT get returns the whole window dictionary from several replicas on every poll, so inlining 1 MB bodies
  would multiply traffic by (replicas x polls); a 1 MB value stored on 5 replicas also costs 5 MB upload per
  message. Index + direct fetch moves each body exactly once per receiver.
* Latency: on publish the node also pushes the signed index entry (``sapo/<swarm>/hint``) to the peers it knows
  (routing table + publishers seen), with the body inside when it is at most ``INLINE_MAX_BYTES`` (64 KB), so a
  small message costs one RPC per receiver. A receiver validates a hint with the same validator and checks the body
  against the signed digest, so a hint is only a shortcut; the DHT stays the source of truth. Receivers still poll
  the current and previous window keys, with backoff from ``poll_interval_s`` to ``max_poll_interval_s`` (back to
  fast when something new appeared), which catches whatever hints missed (new joiners, peers beyond the routing
  table, lost hints). Measured: README "Measured" (scripts/bench_transport.py, both backends side by side:
  latency, wire bytes per envelope, CPU per node); DHT polling alone, 8 nodes p99 1.1 s, bounded by the backoff.
* What arrives is de-duplicated by (publisher, seq); own records are never returned. A failed body fetch is
  retried on later polls (a few times) while the index record lives.
* Re-mesh: hivemind drops a peer from the routing table on its first failed RPC and never calls the initial peers
  again after start, so a node whose bootstrap peer restarted (with no memory of it) or whose network was
  partitioned for a while would stay alone for good. Every ``REMESH_INTERVAL_S`` the node pings the initial peers
  and the recent publishers that are missing from its routing table (dialling initial peers at their configured
  address); the ping puts both sides back into each other's tables, and after a success a lookup of the node's own
  id re-learns the rest of the swarm, as at start. Measured in tests/integration/test_chaos.py.

Limits: the publisher must be reachable (directly or via a libp2p relay) while its receivers fetch bodies; a body
is kept in its outbox for ``record_ttl_s`` (bounded by ``OUTBOX_MAX_BYTES``). Importing hivemind imports torch
(~1.5 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import struct
import tempfile
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import msgpack

from node.config import HivemindTransportConfig
from swarm.identity import Identity, public_from_peer_id
from swarm.transport.base import BootstrapError, Inbox, Received, Transport, TransportError, TransportStats

if "HIVEMIND_LOGLEVEL" not in os.environ:
    # hivemind logs every unreachable peer at WARNING; the transport counts those in stats() instead.
    os.environ["HIVEMIND_LOGLEVEL"] = "ERROR"

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402
from hivemind.dht.node import DHTID, DHTNode  # noqa: E402
from hivemind.dht.validation import DHTRecord, RecordValidatorBase  # noqa: E402
from hivemind.p2p import P2P, P2PContext, PeerID  # noqa: E402
from hivemind.utils.serializer import MSGPackSerializer  # noqa: E402

log = logging.getLogger(__name__)


def _die_with_parent_p2pd() -> None:
    """Make every p2pd that hivemind launches get SIGTERM when the thread that started it dies.

    Why: p2pd is a separate Go process; after ``kill -9`` of the node nothing would ever stop it (an orphan
    holding a port and ~30 MB). Linux's PR_SET_PDEATHSIG, set in the child between fork and exec, ties it to
    its creator (our event-loop thread, which lives until ``stop()``). hivemind offers no hook for this, so
    the asyncio spawn function is wrapped once, for the p2pd binary only. The prctl function is resolved
    here, before any fork, so the child runs no Python imports or allocations in between.
    """
    import ctypes
    import signal as _signal
    import sys

    if not sys.platform.startswith("linux") or getattr(asyncio.subprocess, "_sapo_pdeathsig", False):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig, sigterm = 1, int(_signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    original = asyncio.subprocess.create_subprocess_exec

    async def spawn(program, *args, **kwargs):
        if os.path.basename(str(program)) == "p2pd" and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = preexec
        return await original(program, *args, **kwargs)

    asyncio.subprocess.create_subprocess_exec = spawn
    asyncio.subprocess._sapo_pdeathsig = True


_die_with_parent_p2pd()
logging.getLogger("hivemind").setLevel(getattr(logging, os.environ["HIVEMIND_LOGLEVEL"].upper(), logging.ERROR))

MAX_PAYLOAD_BYTES = 1_900_000
"""hivemind's unary calls travel over p2pd's persistent connection, whose messages are capped at 2-4 MB."""
MAX_INDEX_VALUE_BYTES = 1024
MAX_EXPIRATION_AHEAD_S = 24 * 3600
OUTBOX_MAX_BYTES = 256 * 1024 * 1024
INLINE_MAX_BYTES = 64 * 1024
"""Hints carry the body itself up to this size (one RPC per receiver instead of hint + fetch). Larger bodies are
fetched by the receivers at their own pace: pushing 256 KB to 15 peers at once from each of 16 publishers timed
out hundreds of hints on a 2-core machine (p99 6.7 s), fetching kept p99 at 3.6 s there."""
FETCH_ATTEMPTS = 4
FETCH_CONCURRENCY = 8
RPC_TIMEOUT_S = 10.0
REMESH_INTERVAL_S = 5.0
REMESH_MAX_PEERS = 16
PUBLISHERS_MAX = 4096
SEEN_MAX = 100_000
"""(publisher, seq) pairs remembered as delivered, oldest forgotten first: Sybil publishers are free, so this must
not grow with what they store. Forgetting early costs at most a duplicate delivery, which the pool drops."""
_SIG_DOMAIN = b"sapo-swarm/dht-record/v1"


def _blob_class():
    """A one-field protobuf message (bytes data) built at runtime: hivemind's unary handlers speak protobuf."""
    fdp = descriptor_pb2.FileDescriptorProto(name="sapo_swarm_transport.proto", package="sapo_swarm")
    msg = fdp.message_type.add(name="Blob")
    msg.field.add(name="data", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sapo_swarm.Blob"))


Blob = _blob_class()


def subkey_owner(subkey: object) -> str | None:
    """The peer id that owns a subkey ``"<peer id>/<seq>"`` (None if it names no Ed25519 peer)."""
    if not isinstance(subkey, str):
        return None
    peer_id, sep, rest = subkey.partition("/")
    if not sep or not rest.isdigit() or public_from_peer_id(peer_id) is None:
        return None
    return peer_id


def _signed_bytes(record: DHTRecord, inner: bytes) -> bytes:
    parts = [_SIG_DOMAIN, bytes(record.key), bytes(record.subkey), bytes(inner)]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts) + struct.pack(">d", float(record.expiration_time))


class SignedSubkeyValidator(RecordValidatorBase):
    """Accept a DHT record only if its subkey names an Ed25519 peer and that peer signed (key, subkey, value,
    expiration). Never raises on hostile input: it returns False and logs at debug."""

    def __init__(self, identity: Identity | None = None, max_value_bytes: int = MAX_INDEX_VALUE_BYTES):
        self.identity = identity
        self.max_value_bytes = max_value_bytes
        self.rejected = 0

    def sign_value(self, record: DHTRecord) -> bytes:
        owner = subkey_owner(MSGPackSerializer.loads(record.subkey))
        if self.identity is None or owner != self.identity.peer_id:
            raise ValueError(f"refusing to sign a record under subkey owner {owner!r}: it is not this node")
        signature = self.identity.sign(_signed_bytes(record, record.value))
        return msgpack.packb([bytes(record.value), signature], use_bin_type=True)

    def validate(self, record: DHTRecord) -> bool:
        try:
            reason = self._why_invalid(record)
        except Exception as e:  # hostile bytes may break any decoder; that is a rejection, not a crash
            reason = f"undecodable ({type(e).__name__})"
        if reason is not None:
            self.rejected += 1
            log.debug("rejected DHT record: %s", reason)
            return False
        return True

    def _why_invalid(self, record: DHTRecord) -> str | None:
        if not isinstance(record.value, (bytes, bytearray)) or len(record.value) > self.max_value_bytes + 128:
            return "value too large or not bytes"
        if not isinstance(record.expiration_time, (int, float)) or not math.isfinite(record.expiration_time):
            return "bad expiration"
        if record.expiration_time > time.time() + MAX_EXPIRATION_AHEAD_S:
            return "expiration too far ahead"
        owner = subkey_owner(msgpack.unpackb(bytes(record.subkey), raw=False))
        if owner is None:
            return "subkey names no Ed25519 peer id"
        wrapped = msgpack.unpackb(bytes(record.value), raw=False)
        if not (isinstance(wrapped, list) and len(wrapped) == 2
                and all(isinstance(x, bytes) for x in wrapped)):
            return "value is not [inner, signature]"
        inner, signature = wrapped
        if len(inner) > self.max_value_bytes:
            return "inner value too large"
        if not Identity.verify(public_from_peer_id(owner), signature, _signed_bytes(record, inner)):
            return f"bad signature for subkey owner {owner}"
        return None

    def strip_value(self, record: DHTRecord) -> bytes:
        return msgpack.unpackb(bytes(record.value), raw=False)[0]


def _parse_meta(value: object) -> tuple[int, int, bytes, float] | None:
    if (isinstance(value, (list, tuple)) and len(value) == 4 and isinstance(value[0], int)
            and isinstance(value[1], int) and isinstance(value[2], bytes) and len(value[2]) == 32
            and isinstance(value[3], (int, float))):
        return value[0], value[1], value[2], float(value[3])
    return None


class HivemindTransport(Transport):
    def __init__(self, cfg: HivemindTransportConfig, identity: Identity, swarm_id: str, initial_peers: list[str],
                 push_hints: bool = True, inline_max_bytes: int = INLINE_MAX_BYTES):
        self.cfg = cfg
        self.identity = identity
        self.swarm_id = swarm_id
        self.initial_peers = list(initial_peers)
        self.push_hints = push_hints
        self.inline_max_bytes = inline_max_bytes
        self.validator = SignedSubkeyValidator(identity)
        self._body_handler = f"sapo/{swarm_id}/body"
        self._hint_handler = f"sapo/{swarm_id}/hint"

        self._lock = threading.Lock()
        self._stats = TransportStats()
        self._inbox = Inbox(self._lock, self._stats)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._p2p: P2P | None = None
        self._node: DHTNode | None = None
        self._addresses: list[str] = []
        self._started = False
        self._stopped = False

        # loop-thread state
        self._seq = int(time.time() * 1000)  # unique across restarts with the same key
        self._outbox: dict[int, tuple[bytes, float]] = {}
        self._outbox_bytes = 0
        self._seen: dict[tuple[str, int], float] = {}  # (publisher, seq) -> forget after
        self._attempts: dict[tuple[str, int], int] = {}
        self._publishers: dict[str, float] = {}  # peer id -> last seen
        self._tasks: set[asyncio.Task] = set()
        self._fetch_sem: asyncio.Semaphore | None = None

    # ------------------------------------------------------------------ sync API
    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"hivemind-transport-{self.peer_id[-6:]}",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._astart(), timeout=60)
        except BaseException:
            self.stop()
            raise

    def publish(self, payload: bytes) -> None:
        if not self._started or self._stopped:
            raise TransportError("transport is not running; call start() first")
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise TransportError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        asyncio.run_coroutine_threadsafe(self._apublish(payload), self._loop)

    def incoming(self, max_items: int | None = None) -> list[Received]:
        return self._inbox.drain(max_items)

    def peers(self) -> list[str]:
        if not self._started or self._stopped:
            return []
        return self._call(self._apeers(), timeout=10)

    def addresses(self) -> list[str]:
        return list(self._addresses)

    def stats(self) -> TransportStats:
        with self._lock:
            s = self._stats
            return TransportStats(s.bytes_in, s.bytes_out, s.messages_in, s.messages_out, dict(s.errors))

    def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(30)
            except Exception as e:  # still tear down the loop and the daemon below
                log.warning("hivemind transport shutdown: %r", e)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(15)
        self._kill_daemon()

    # ------------------------------------------------------------------ internals
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro, timeout: float):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise TransportError(f"hivemind transport call timed out after {timeout} s") from None

    def _count_error(self, kind: str) -> None:
        with self._lock:
            self._stats.errors[kind] = self._stats.errors.get(kind, 0) + 1

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _window_key(self, window: int) -> str:
        return f"sapo/{self.swarm_id}/w/{window}"

    def _window(self, t: float | None = None) -> int:
        return int((time.time() if t is None else t) // self.cfg.window_s)

    async def _astart(self) -> None:
        for addr in self.initial_peers:
            if "/p2p/" not in addr:
                raise BootstrapError(f"initial peer {addr!r} has no /p2p/<peer id> part; "
                                     "copy a full address from the other node's addresses()")
        loopback_only = all(a.startswith(("/ip4/127.", "/ip6/::1/")) for a in self.cfg.listen)
        with tempfile.TemporaryDirectory(prefix="sapo-p2p-") as tmp:
            id_path = os.path.join(tmp, "identity.key")
            fd = os.open(id_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.identity.libp2p_private_key())
            try:
                self._p2p = await P2P.create(
                    initial_peers=self.initial_peers or None, host_maddrs=self.cfg.listen,
                    announce_maddrs=self.cfg.announce or None, identity_path=id_path,
                    check_if_identity_free=False,  # hivemind's probe only parses RSA keys
                    auto_nat=not loopback_only, nat_port_map=not loopback_only)
            except Exception as e:
                if self.initial_peers:
                    raise BootstrapError(f"could not start p2pd with initial peers {self.initial_peers}: {e}") from e
                raise TransportError(f"could not start p2pd listening on {self.cfg.listen}: {e}") from e
        if self._p2p.peer_id.to_base58() != self.peer_id:
            raise TransportError(f"p2pd took peer id {self._p2p.peer_id} instead of {self.peer_id}")
        try:
            self._node = await DHTNode.create(
                p2p=self._p2p, initial_peers=self.initial_peers or None, record_validator=self.validator,
                wait_timeout=3, ensure_bootstrap_success=True)
        except Exception as e:
            await self._p2p.shutdown()
            raise BootstrapError(f"none of the initial peers {self.initial_peers} answered: {e}") from e
        self._addresses = [str(a) for a in await self._p2p.get_visible_maddrs()]
        self._fetch_sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        await self._p2p.add_protobuf_handler(self._body_handler, self._serve_body, Blob)
        await self._p2p.add_protobuf_handler(self._hint_handler, self._on_hint, Blob)
        self._spawn(self._poll_loop())
        self._spawn(self._remesh_loop())

    async def _astop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._node is not None:
            try:
                await asyncio.wait_for(self._node.shutdown(), 10)
            except Exception as e:
                log.debug("DHTNode shutdown: %r", e)
        if self._p2p is not None:
            try:
                await asyncio.wait_for(self._p2p.shutdown(), 10)
            except Exception as e:
                log.debug("P2P shutdown: %r", e)
        # hivemind leaves helper tasks behind (e.g. a bootstrap sleep); cancel them before the loop stops
        stragglers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in stragglers:
            task.cancel()
        await asyncio.gather(*stragglers, return_exceptions=True)

    def _kill_daemon(self) -> None:
        """Last resort so that no p2pd outlives the transport (it is our child: kill it by pid)."""
        child = getattr(self._p2p, "_child", None) if self._p2p is not None else None
        if child is not None and child.returncode is None:
            try:
                os.kill(child.pid, 9)
                os.waitpid(child.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    async def _apeers(self) -> list[str]:
        ids = {p.to_base58() for p in self._node.protocol.routing_table.peer_id_to_uid}
        horizon = time.time() - self.cfg.record_ttl_s
        ids |= {p for p, t in self._publishers.items() if t > horizon}
        ids.discard(self.peer_id)
        return sorted(ids)

    # publishing -------------------------------------------------------------
    def _record(self, window: int, subkey: str, meta: list, expiration: float) -> tuple[DHTRecord, bytes]:
        record = DHTRecord(DHTID.generate(source=self._window_key(window)).to_bytes(),
                           MSGPackSerializer.dumps(subkey), MSGPackSerializer.dumps(meta), expiration)
        return record, self.validator.sign_value(record)

    async def _apublish(self, payload: bytes) -> None:
        now = time.time()
        self._seq += 1
        seq = self._seq
        self._outbox[seq] = (payload, now + self.cfg.record_ttl_s)
        self._outbox_bytes += len(payload)
        self._prune_outbox(now)
        window, subkey = self._window(now), f"{self.peer_id}/{seq}"
        meta = [seq, len(payload), hashlib.sha256(payload).digest(), now]
        expiration = now + self.cfg.record_ttl_s
        with self._lock:
            self._stats.messages_out += 1
        if self.push_hints:
            _, signed = self._record(window, subkey, meta, expiration)
            body = payload if len(payload) <= self.inline_max_bytes else b""
            hint = Blob(data=msgpack.packb([window, subkey, signed, expiration, body], use_bin_type=True))
            for peer in await self._apeers():
                self._spawn(self._send_hint(peer, hint))
        try:
            ok = await asyncio.wait_for(
                self._node.store(self._window_key(window), meta, expiration, subkey=subkey), RPC_TIMEOUT_S)
        except Exception as e:
            log.debug("DHT store failed: %r", e)
            ok = False
        if not ok:
            self._count_error("store_failed")

    async def _send_hint(self, peer: str, hint) -> None:
        try:
            await asyncio.wait_for(
                self._p2p.call_protobuf_handler(PeerID.from_base58(peer), self._hint_handler, hint, Blob),
                RPC_TIMEOUT_S)
        except Exception as e:
            log.debug("hint to %s failed: %r", peer, e)
            self._count_error("hint_failed")
        else:
            with self._lock:  # bodies ride inside hints up to inline_max_bytes: they count as sent bytes
                self._stats.bytes_out += len(hint.data)

    def _prune_outbox(self, now: float) -> None:
        for seq in [s for s, (_, exp) in self._outbox.items() if exp < now]:
            self._outbox_bytes -= len(self._outbox.pop(seq)[0])
        while self._outbox_bytes > OUTBOX_MAX_BYTES and len(self._outbox) > 1:
            oldest = min(self._outbox)
            self._outbox_bytes -= len(self._outbox.pop(oldest)[0])

    async def _serve_body(self, request, context: P2PContext):
        try:
            (seq,) = msgpack.unpackb(request.data, raw=False)
            payload, _ = self._outbox[seq]
        except Exception:
            self._count_error("body_request_bad")
            raise KeyError("unknown or expired message") from None
        with self._lock:
            self._stats.bytes_out += len(payload)
        return Blob(data=payload)

    # receiving --------------------------------------------------------------
    async def _on_hint(self, request, context: P2PContext):
        try:
            window, subkey, signed, expiration, body = msgpack.unpackb(request.data, raw=False)
            if not isinstance(window, int) or abs(window - self._window()) > 1:
                raise ValueError("window out of range")
            record = DHTRecord(DHTID.generate(source=self._window_key(window)).to_bytes(),
                               MSGPackSerializer.dumps(subkey), signed, expiration)
            if not self.validator.validate(record):
                raise ValueError("invalid record")
            meta = MSGPackSerializer.loads(self.validator.strip_value(record))
            self._on_index(subkey, meta, body if isinstance(body, bytes) else b"")
        except Exception as e:
            log.debug("bad hint from %s: %r", context.remote_id, e)
            self._count_error("hint_rejected")
        return Blob()

    async def _remesh_loop(self) -> None:
        while True:
            await asyncio.sleep(REMESH_INTERVAL_S)
            try:
                await self._remesh_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("re-mesh failed: %r", e)
                self._count_error("remesh_failed")

    async def _remesh_once(self) -> int:
        """Ping initial peers and recent publishers missing from the routing table; returns how many answered."""
        table = self._node.protocol.routing_table
        targets: dict[str, list[str]] = {}
        for addr in self.initial_peers:
            targets.setdefault(addr.rpartition("/p2p/")[2], []).append(addr)
        horizon = time.time() - self.cfg.record_ttl_s
        for peer, seen in self._publishers.items():
            if seen > horizon:
                targets.setdefault(peer, [])
        targets.pop(self.peer_id, None)
        answered = 0
        missing = [(PeerID.from_base58(p), a) for p, a in targets.items() if PeerID.from_base58(p) not in table]
        for pid, addrs in missing[:REMESH_MAX_PEERS]:  # initial peers first; bounded work per pass
            peer = pid.to_base58()
            if addrs:  # the daemon may have forgotten a restarted peer's address; dial the configured one
                from multiaddr import Multiaddr

                try:
                    await asyncio.wait_for(self._p2p._client.connect(pid, [Multiaddr(a) for a in addrs]),
                                           RPC_TIMEOUT_S)
                except Exception as e:
                    log.debug("re-mesh dial %s failed: %r", peer, e)
                    continue
            if await asyncio.wait_for(self._node.protocol.call_ping(pid), RPC_TIMEOUT_S) is not None:
                self._node.blacklist.register_success(pid)
                answered += 1
        if answered:
            log.debug("re-meshed with %d peer(s)", answered)
            await asyncio.wait_for(self._node.find_nearest_nodes([self._node.node_id]), RPC_TIMEOUT_S)
        return answered

    async def _poll_loop(self) -> None:
        interval = self.cfg.poll_interval_s
        while True:
            try:
                new = await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("poll failed: %r", e)
                self._count_error("poll_failed")
                new = 0
            interval = self.cfg.poll_interval_s if new else min(interval * 2, self.cfg.max_poll_interval_s)
            await asyncio.sleep(interval)

    async def _poll_once(self) -> int:
        now = time.time()
        w = self._window(now)
        keys = [self._window_key(w), self._window_key(w - 1)]
        found = await asyncio.wait_for(
            self._node.get_many(keys, sufficient_expiration_time=float("inf")), RPC_TIMEOUT_S)
        new = 0
        for key in keys:
            entry = found.get(key)
            if entry is None or not isinstance(entry.value, dict):
                continue
            for subkey, item in entry.value.items():
                new += self._on_index(subkey, item.value)
        for k in [k for k, t in self._seen.items() if t < now]:
            del self._seen[k]
            self._attempts.pop(k, None)
        return new

    def _on_index(self, subkey: object, value: object, body: bytes = b"") -> int:
        """Deliver (``body`` pushed with a hint) or fetch the body of a validated index entry; 1 if it was new."""
        owner = subkey_owner(subkey)
        meta = _parse_meta(value)
        if owner is None or meta is None or owner == self.peer_id:
            return 0
        seq = meta[0]
        if seq != int(subkey.rpartition("/")[2]):
            return 0
        # Most recent last; bounded, since Sybil keys are free (oldest forgotten first).
        self._publishers.pop(owner, None)
        self._publishers[owner] = time.time()
        while len(self._publishers) > PUBLISHERS_MAX:
            del self._publishers[next(iter(self._publishers))]
        if (owner, seq) in self._seen:
            return 0
        self._seen[(owner, seq)] = time.time() + self.cfg.record_ttl_s + 2 * self.cfg.window_s
        while len(self._seen) > SEEN_MAX:
            oldest = next(iter(self._seen))
            del self._seen[oldest]
            self._attempts.pop(oldest, None)
        if body and len(body) == meta[1] and hashlib.sha256(body).digest() == meta[2]:
            self._deliver(owner, body)
        else:
            if body:
                self._count_error("pushed_body_mismatch")
            self._spawn(self._fetch(owner, meta))
        return 1

    def _deliver(self, owner: str, payload: bytes) -> None:
        self._inbox.put(payload, owner)

    async def _fetch(self, owner: str, meta: tuple[int, int, bytes, float]) -> None:
        seq, size, digest, _ = meta
        async with self._fetch_sem:
            try:
                reply = await asyncio.wait_for(self._p2p.call_protobuf_handler(
                    PeerID.from_base58(owner), self._body_handler,
                    Blob(data=msgpack.packb([seq])), Blob), RPC_TIMEOUT_S)
                payload = reply.data
                if len(payload) != size or hashlib.sha256(payload).digest() != digest:
                    raise ValueError("body does not match its signed index entry")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("fetch %s/%s failed: %r", owner, seq, e)
                self._count_error("fetch_failed")
                attempts = self._attempts.get((owner, seq), 0) + 1
                self._attempts[(owner, seq)] = attempts
                if attempts < FETCH_ATTEMPTS:
                    self._seen.pop((owner, seq), None)  # the next poll finds the index entry again and retries
                return
        self._deliver(owner, payload)
