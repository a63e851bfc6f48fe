"""Chunk framing for the libp2p transport: split a payload into gossip frames, reassemble with bounded buffers.

Pure (no libp2p import), so it is unit-tested without a network and imported without clashing with hivemind
(hivemind and py-libp2p both register protobuf package ``crypto.pb`` and cannot live in one process).

A frame is msgpack ``[1, msg_id(16 B), index, count, total, sha256(payload), chunk]``. Every frame travels as its
own gossipsub message signed by its author (strict signing), so the reassembly key is ``(author, msg_id)``: a
peer cannot slip chunks into another author's message, only into its own. The payload is handed on only when all
``count`` chunks arrived, their lengths add up to ``total`` and the sha256 matches.

    frames = split(payload, max_frame_bytes=60_000)
    r = Reassembler(); for f in frames: out = r.add("12D3Koo...", f)   # -> payload on the last frame, else None
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgpack

VERSION = 1
FRAME_OVERHEAD = 1024
"""Bytes reserved per frame for our header (~70 B) and the gossipsub RPC around it (from, seqno, topic, 64 B
signature, 36 B key): a frame of ``max_frame_bytes`` of *wire* size carries ``max_frame_bytes - 1024`` bytes."""
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


class FrameError(ValueError):
    """A frame that is malformed, inconsistent with its siblings, or over a bound. ``reason`` is a metrics key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def split(payload: bytes, max_frame_bytes: int, msg_id: bytes | None = None) -> list[bytes]:
    """Frames of at most ``max_frame_bytes`` (including gossip overhead) that together carry ``payload``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    chunk = max_frame_bytes - FRAME_OVERHEAD
    if chunk < 256:
        raise ValueError(f"max_frame_bytes={max_frame_bytes} leaves no room for data; use at least 1280")
    msg_id = msg_id or os.urandom(16)
    digest = hashlib.sha256(payload).digest()
    count = max(1, -(-len(payload) // chunk))
    return [msgpack.packb([VERSION, msg_id, i, count, len(payload), digest, payload[i * chunk:(i + 1) * chunk]],
                          use_bin_type=True) for i in range(count)]


def parse(frame: bytes) -> tuple[bytes, int, int, int, bytes, bytes]:
    """``(msg_id, index, count, total, sha256, chunk)``; raises FrameError on anything else."""
    try:
        obj = msgpack.unpackb(frame, raw=False, max_bin_len=len(frame), max_array_len=7, max_str_len=0,
                              max_map_len=0, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types on hostile bytes
        raise FrameError("undecodable", type(e).__name__) from None
    if not (isinstance(obj, list) and len(obj) == 7 and obj[0] == VERSION):
        raise FrameError("bad_shape")
    _, msg_id, index, count, total, digest, chunk = obj
    if not (isinstance(msg_id, bytes) and len(msg_id) == 16 and isinstance(digest, bytes) and len(digest) == 32
            and isinstance(chunk, bytes) and all(isinstance(x, int) and not isinstance(x, bool)
                                                 for x in (index, count, total))):
        raise FrameError("bad_shape")
    if not (0 <= total <= MAX_PAYLOAD_BYTES and 1 <= count and 0 <= index < count and len(chunk) <= total):
        raise FrameError("bad_bounds", f"index={index} count={count} total={total}")
    return msg_id, index, count, total, digest, chunk


@dataclass
class _Partial:
    count: int
    total: int
    digest: bytes
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects chunks per ``(author, msg_id)``. Memory is bounded three ways: per author
    (``max_partial_per_author`` messages in flight), globally (``max_pending_bytes``; the oldest partial message is
    dropped first) and in time (partials older than ``timeout_s`` are dropped by ``expire``). Completed ids are
    remembered for ``timeout_s`` so a replayed chunk cannot restart a message. Single-threaded use only."""

    def __init__(self, max_pending_bytes: int = 64 * 1024 * 1024, max_partial_per_author: int = 8,
                 timeout_s: float = 30.0, max_payload_bytes: int = MAX_PAYLOAD_BYTES):
        self.max_pending_bytes = max_pending_bytes
        self.max_partial_per_author = max_partial_per_author
        self.timeout_s = timeout_s
        self.max_payload_bytes = max_payload_bytes
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._done: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self.pending_bytes = 0
        self.dropped: dict[str, int] = {}

    def _drop(self, key: tuple[str, bytes], reason: str) -> None:
        p = self._partials.pop(key, None)
        if p is not None:
            self.pending_bytes -= p.size
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def add(self, author: str, frame: bytes, now: float | None = None) -> bytes | None:
        """The whole payload when ``frame`` completes one, else None. Raises FrameError (the frame is dropped;
        a partial message it contradicts is dropped too)."""
        now = time.monotonic() if now is None else now
        msg_id, index, count, total, digest, chunk = parse(frame)
        if total > self.max_payload_bytes:
            raise FrameError("too_large", f"{total} > {self.max_payload_bytes}")
        key = (author, msg_id)
        if key in self._done:
            raise FrameError("duplicate")
        if count == 1:
            return self._finish(key, {0: chunk}, total, digest, now)
        p = self._partials.get(key)
        if p is None:
            if sum(1 for a, _ in self._partials if a == author) >= self.max_partial_per_author:
                raise FrameError("author_backlog", f"{author} has {self.max_partial_per_author} partial messages")
            p = self._partials[key] = _Partial(count, total, digest, now)
        elif (p.count, p.total, p.digest) != (count, total, digest):
            self._drop(key, "inconsistent")
            raise FrameError("inconsistent")
        if index in p.chunks:
            raise FrameError("duplicate")
        if p.size + len(chunk) > total:
            self._drop(key, "overflow")
            raise FrameError("overflow")
        p.chunks[index] = chunk
        p.size += len(chunk)
        self.pending_bytes += len(chunk)
        while self.pending_bytes > self.max_pending_bytes and self._partials:
            self._drop(next(iter(self._partials)), "memory")
        if key not in self._partials:
            raise FrameError("memory")
        if len(p.chunks) < p.count:
            return None
        self._drop(key, "completed")
        self.dropped["completed"] -= 1
        return self._finish(key, p.chunks, total, digest, now)

    def _finish(self, key, chunks: dict[int, bytes], total: int, digest: bytes, now: float) -> bytes:
        payload = b"".join(chunks[i] for i in range(len(chunks)))
        if len(payload) != total or hashlib.sha256(payload).digest() != digest:
            raise FrameError("digest_mismatch")
        self._done[key] = now + self.timeout_s
        return payload

    def expire(self, now: float | None = None) -> int:
        """Drop partials older than ``timeout_s`` and forget old completed ids; returns how many partials."""
        now = time.monotonic() if now is None else now
        stale = [k for k, p in self._partials.items() if now - p.started > self.timeout_s]
        for k in stale:
            self._drop(k, "timeout")
        while self._done and next(iter(self._done.values())) < now:
            self._done.popitem(last=False)
        return len(stale)
