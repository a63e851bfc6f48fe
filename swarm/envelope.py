"""Signed rollout envelopes: what crosses the wire between nodes (one envelope = one rollout group).

Wire layout (outer to inner)::

    payload  = zstd( wrapper )                       one or more zstd frames, nothing after them
    wrapper  = msgpack [ body: bin, signature: bin ] a 2-element array of byte strings
    body     = canonical_bytes(Envelope)             msgpack map, keys sorted by name (see below)
    signature = Ed25519(sender key, body)            64 bytes, over the exact body bytes

The body is the msgpack encoding of ``Envelope`` with map keys in sorted order, produced by msgspec, so the
same struct always gives the same bytes (in any process, on any machine). Receivers additionally insist that
the body *is* canonical (re-encoding the decoded struct gives the received bytes), so one envelope has exactly
one body and its sha256 (``Decoded.digest``) identifies it for deduplication.

``Envelope`` fields:

- ``v``: format version (``FORMAT_VERSION``); ``swarm``: swarm id, envelopes only count inside one swarm.
- ``sender``: the signer's raw 32-byte Ed25519 public key; its libp2p peer id is the node's peer id.
- ``seq``: the sender's sequence number (distinct per envelope; used for replay detection).
- ``created_at``: sender's wall clock, unix seconds.
- ``task``: the task reference (source, dataset, canonical JSON config, seed, index); every receiver
  regenerates question and answer from it itself.
- ``completions`` / ``finished``: the G completion texts and whether each ended with EOS.
- ``logprobs``: optional per-token behaviour logprobs (only useful to receivers running the same model).
- ``model_id``: the sender's model name; ``reward_claims``: the sender's own rewards, informational only:
  receivers always re-score.

Decoding is defensive: the compressed size is checked before anything else, decompression is capped (a
frame that declares a content size above the cap is refused from its header; a frame without one is
streamed and cut at the cap, and the decompressor's window is capped too), msgspec decodes into typed structs
strictly (wrong types, missing or unknown fields are errors), and ``decode`` raises only ``EnvelopeError``.
Never pickle.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Annotated

import msgspec
import zstandard

from swarm.identity import Identity

FORMAT_VERSION = 1

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
ZSTD_LEVEL = 3
_MAX_WINDOW_LOG = 27  # never let a frame header make the decompressor reserve more than 128 MiB of window

REASONS = ("oversize", "undecodable", "schema", "bad_signature")


# Wire caps, enforced by the decoder itself (msgspec checks an array's length from its header, before decoding
# any element). Without them a ~200-byte zstd payload of 4 million empty msgpack arrays in ``logprobs`` cost
# ~0.8 s of CPU and ~290 MiB of memory before admission's own limits ran (found while building the fuzz
# corpus; see docs/SECURITY.md). Admission's configurable limits (``admission.max_completions`` ...) still apply on top;
# these only have to be far above any honest envelope.
MAX_WIRE_COMPLETIONS = 256
"""Most elements in ``completions``, ``finished``, ``logprobs`` and ``reward_claims``."""
MAX_WIRE_TOKENS = 4096
"""Most logprobs per completion."""
MAX_WIRE_LOGPROBS = 65536
"""Most logprobs in one envelope, checked from the arrays' headers before they are decoded: a float sent as a
1-byte msgpack int decodes to a 32-byte Python float, so 256 x 4096 of them (~1 MB, ~150 bytes compressed)
would still cost ~30 ms and ~40 MiB."""
MAX_WIRE_NAME_CHARS = 256
"""Longest ``swarm``, ``task.source``, ``task.dataset`` and ``model_id``."""
MAX_WIRE_CONFIG_CHARS = 4096
"""Longest ``task.config`` (canonical JSON; receivers ``json.loads`` it)."""

_Name = Annotated[str, msgspec.Meta(max_length=MAX_WIRE_NAME_CHARS)]


class WireTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: _Name
    dataset: _Name
    config: Annotated[str, msgspec.Meta(max_length=MAX_WIRE_CONFIG_CHARS)]
    seed: int
    index: int


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    swarm: _Name
    sender: bytes
    seq: int
    created_at: float
    task: WireTask
    completions: Annotated[list[str], msgspec.Meta(max_length=MAX_WIRE_COMPLETIONS)]
    finished: Annotated[list[bool], msgspec.Meta(max_length=MAX_WIRE_COMPLETIONS)]
    logprobs: Annotated[list[Annotated[list[float], msgspec.Meta(max_length=MAX_WIRE_TOKENS)]],
                        msgspec.Meta(max_length=MAX_WIRE_COMPLETIONS)] | None
    model_id: _Name
    reward_claims: Annotated[list[float], msgspec.Meta(max_length=MAX_WIRE_COMPLETIONS)]


class EnvelopeError(ValueError):
    """A payload that is not a valid signed envelope; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    envelope: Envelope
    body: bytes
    signature: bytes
    digest: bytes
    """sha256 of ``body``."""


# msgspec encoders/decoders are immutable after construction and safe to share between threads.
_BODY_ENCODER = msgspec.msgpack.Encoder(order="sorted")
_WRAPPER_ENCODER = msgspec.msgpack.Encoder()
_BODY_DECODER = msgspec.msgpack.Decoder(Envelope)
_WRAPPER_DECODER = msgspec.msgpack.Decoder(tuple[bytes, bytes])


class _Version(msgspec.Struct):
    v: int


_VERSION_DECODER = msgspec.msgpack.Decoder(_Version)


class _LogprobsShape(msgspec.Struct):
    logprobs: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_WIRE_COMPLETIONS)] | None = None


_LOGPROBS_DECODER = msgspec.msgpack.Decoder(_LogprobsShape)


def _array_len(raw: bytes) -> int:
    """Element count from a msgpack array header (0 for anything else: the typed decode rejects it)."""
    if not raw:
        return 0
    b = raw[0]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F
    if b == 0xDC and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big")
    if b == 0xDD and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big")
    return 0


_DECODE_ERRORS = (msgspec.DecodeError, ValueError, TypeError, RecursionError)
"""What msgspec raises on hostile msgpack. RecursionError: msgspec bounds nesting by the interpreter's
recursion limit, so a few hundred KB of nested one-element arrays (a few hundred compressed bytes) raise it
while being decoded or skipped (found while building the fuzz corpus; it used to escape from ``peek_version``
as an admission internal_error, logged at WARNING with a traceback per hostile envelope)."""


def canonical_bytes(env: Envelope) -> bytes:
    """The deterministic msgpack body of ``env`` (map keys sorted): the bytes that are signed."""
    return _BODY_ENCODER.encode(env)


def envelope_from_group(group, swarm_id: str, identity, seq: int, now: float | None = None,
                        include_logprobs: bool = False) -> Envelope:
    """The envelope of a locally generated, locally rewarded ``RolloutGroup``.

    Logprobs are included only when asked and every completion has them.
    """
    ref = group.task.ref
    completions = list(group.completions)
    logprobs = None
    if include_logprobs and completions and all(c.logprobs is not None for c in completions):
        logprobs = [[float(x) for x in c.logprobs] for c in completions]
    return Envelope(
        v=FORMAT_VERSION,
        swarm=str(swarm_id),
        sender=bytes(identity.public_bytes),
        seq=int(seq),
        created_at=float(time.time() if now is None else now),
        task=WireTask(source=ref.source, dataset=ref.dataset, config=ref.config, seed=int(ref.seed),
                      index=int(ref.index)),
        completions=[str(c.text) for c in completions],
        finished=[bool(c.finished) for c in completions],
        logprobs=logprobs,
        model_id=str(group.model_id),
        reward_claims=[float(r) for r in group.rewards],
    )


def encode(env: Envelope, identity) -> bytes:
    """Sign and pack ``env``: ``zstd(msgpack([canonical_bytes(env), signature]))``."""
    if env.sender != identity.public_bytes:
        raise ValueError("envelope sender is not this identity's public key")
    body = canonical_bytes(env)
    signature = identity.sign(body)
    wrapper = _WRAPPER_ENCODER.encode((body, signature))
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(wrapper)


# ---------------------------------------------------------------------------------------------------------
# Decoding, in stages (``decode`` runs them all; admission interleaves its own cheap checks between them)


def _window_cap(max_decompressed: int) -> int:
    log = max(10, (max(1, max_decompressed) - 1).bit_length())  # zstd's minimum window is 1 KiB
    return 1 << min(log, _MAX_WINDOW_LOG)


def decompress_capped(data: bytes, max_compressed: int, max_decompressed: int) -> bytes:
    """zstd-decompress ``data`` without ever holding more than ``max_decompressed + 1`` output bytes."""
    if len(data) > max_compressed:
        raise EnvelopeError("oversize", f"{len(data)} compressed bytes > {max_compressed}")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise EnvelopeError("undecodable", f"not a zstd frame: {exc}") from None
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > max_decompressed:
        raise EnvelopeError("oversize", f"frame declares {params.content_size} bytes > {max_decompressed}")
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=_window_cap(max_decompressed))
        reader = dctx.stream_reader(data, read_across_frames=True)
        out = reader.read(max_decompressed + 1)
        if len(out) > max_decompressed:
            raise EnvelopeError("oversize", f"decompresses to more than {max_decompressed} bytes")
        # Anything after the last complete frame (junk, a partial frame) is an error; a frame cut short
        # yields a strict prefix of the wrapper, which msgpack (a prefix-free code) then rejects.
        if reader.read(1):
            raise EnvelopeError("oversize", f"decompresses to more than {max_decompressed} bytes")
    except zstandard.ZstdError as exc:
        raise EnvelopeError("undecodable", f"zstd: {exc}") from None
    return out


def unwrap(data: bytes, max_compressed: int, max_decompressed: int) -> tuple[bytes, bytes]:
    """Size check, capped decompression and the outer ``[body, signature]`` wrapper."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError("undecodable", f"payload is {type(data).__name__}, not bytes")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_compressed:  # before any copy
        raise EnvelopeError("oversize", f"{size} compressed bytes > {max_compressed}")
    raw = decompress_capped(bytes(data), max_compressed, max_decompressed)
    try:
        body, signature = _WRAPPER_DECODER.decode(raw)
    except _DECODE_ERRORS as exc:
        raise EnvelopeError("undecodable", f"wrapper: {exc}") from None
    if len(signature) != SIGNATURE_BYTES:
        raise EnvelopeError("bad_signature", f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    return body, signature


def peek_version(body: bytes) -> int | None:
    """The body's format version, read leniently (other fields ignored), or None when there is none."""
    try:
        return _VERSION_DECODER.decode(body).v
    except _DECODE_ERRORS:
        return None


def parse_body(body: bytes) -> Envelope:
    """Strictly decode a canonical body (``schema`` on wrong types, missing/unknown fields, non-canonical bytes)."""
    try:
        # Skims logprobs (no floats are built) to bound their total before the typed decode.
        shape = _LOGPROBS_DECODER.decode(body)
        if shape.logprobs is not None:
            total = sum(_array_len(memoryview(r)[:5].tobytes()) for r in shape.logprobs)
            if total > MAX_WIRE_LOGPROBS:
                raise EnvelopeError("schema", f"{total} logprobs > {MAX_WIRE_LOGPROBS}")
        env = _BODY_DECODER.decode(body)
    except EnvelopeError:
        raise
    except msgspec.ValidationError as exc:
        raise EnvelopeError("schema", str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise EnvelopeError("undecodable", f"body: {exc}") from None
    if len(env.sender) != PUBLIC_KEY_BYTES:
        raise EnvelopeError("schema", f"sender is {len(env.sender)} bytes, not {PUBLIC_KEY_BYTES}")
    if not math.isfinite(env.created_at):
        raise EnvelopeError("schema", "created_at is not a finite number")
    if canonical_bytes(env) != body:
        raise EnvelopeError("schema", "body is not in canonical encoding")
    return env


def verify(env: Envelope, body: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is the Ed25519 signature of ``body`` by ``env.sender``; never raises."""
    return Identity.verify(env.sender, signature, body)


def decode(data: bytes, max_compressed: int, max_decompressed: int) -> Decoded:
    """Unpack, strictly decode and verify a payload; raises ``EnvelopeError`` (only) when it is not valid."""
    try:
        body, signature = unwrap(data, max_compressed, max_decompressed)
        env = parse_body(body)
        if not verify(env, body, signature):
            raise EnvelopeError("bad_signature", "Ed25519 signature does not match sender and body")
        return Decoded(envelope=env, body=body, signature=signature, digest=hashlib.sha256(body).digest())
    except EnvelopeError:
        raise
    except MemoryError:
        raise EnvelopeError("oversize", "out of memory while decoding") from None
    except Exception as exc:  # defensive: decode promises EnvelopeError only
        raise EnvelopeError("undecodable", f"{type(exc).__name__}: {exc}") from None
