"""Envelope: canonical bytes, signing, and defensive decoding (sizes, bombs, schema, signatures)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import msgspec
import pytest
import zstandard

from node.rollout import Completion, RolloutGroup
from node.tasks import TaskRef, resolve
from swarm import envelope as wire
from swarm.envelope import Decoded, Envelope, EnvelopeError, WireTask, canonical_bytes, decode, encode
from swarm.identity import Identity

ROOT = Path(__file__).resolve().parents[3]
MAX_C = 1 << 20
MAX_D = 4 << 20

# A fixed key so the subprocess test can rebuild the very same envelope.
SEED = bytes(range(32))


def _ident(seed: bytes = SEED) -> Identity:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


def _fixed_env(sender: bytes) -> Envelope:
    return Envelope(v=1, swarm="s", sender=sender, seq=7, created_at=1700000000.25,
                    task=WireTask(source="reasoning_gym", dataset="basic_arithmetic", config="{}", seed=3, index=4),
                    completions=["a", "<answer>2</answer>"], finished=[True, False],
                    logprobs=[[-0.5], [-1.0, -2.0]], model_id="m", reward_claims=[0.0, 1.0])


def _group() -> RolloutGroup:
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 1, 2))
    comps = [Completion(f"<answer>{i}</answer>", token_ids=[1, 2], logprobs=[-0.1 * i, -0.2], finished=i % 2 == 0)
             for i in range(4)]
    return RolloutGroup(task=task, prompt=task.question, completions=comps, rewards=[0.0, 1.0, 0.0, 0.5],
                        model_id="tiny")


def _wrap(body: bytes, sig: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, sig)))


def _reason(payload: bytes, max_c: int = MAX_C, max_d: int = MAX_D) -> str:
    with pytest.raises(EnvelopeError) as info:
        decode(payload, max_c, max_d)
    return info.value.reason


def test_round_trip():
    ident = _ident()
    g = _group()
    env = wire.envelope_from_group(g, "swarm-a", ident, seq=5, now=123.5, include_logprobs=True)
    assert env.task == WireTask("reasoning_gym", "basic_arithmetic", g.task.ref.config, 1, 2)
    assert env.completions == [c.text for c in g.completions]
    assert env.finished == [True, False, True, False]
    assert env.logprobs == [[-0.0, -0.2], [-0.1, -0.2], [-0.2, -0.2], [-0.30000000000000004, -0.2]]
    assert env.reward_claims == [0.0, 1.0, 0.0, 0.5] and env.model_id == "tiny"
    payload = encode(env, ident)
    d = decode(payload, MAX_C, MAX_D)
    assert isinstance(d, Decoded)
    assert d.envelope == env
    assert d.body == canonical_bytes(env)
    import hashlib

    assert d.digest == hashlib.sha256(d.body).digest()
    assert Identity.verify(ident.public_bytes, d.signature, d.body)
    # Without include_logprobs the field is absent (None), and the default time is "now".
    env2 = wire.envelope_from_group(g, "swarm-a", ident, seq=6)
    assert env2.logprobs is None and env2.created_at > 1.6e9
    assert decode(encode(env2, ident), MAX_C, MAX_D).envelope == env2


def test_encode_refuses_foreign_sender():
    env = _fixed_env(Identity.generate().public_bytes)
    with pytest.raises(ValueError):
        encode(env, _ident())


def test_canonical_bytes_stable_in_process_and_across_processes():
    ident = _ident()
    a = canonical_bytes(_fixed_env(ident.public_bytes))
    b = canonical_bytes(_fixed_env(ident.public_bytes))
    assert a == b
    # Decoding and re-encoding gives the same bytes.
    assert canonical_bytes(msgspec.msgpack.decode(a, type=Envelope)) == a
    # A fresh interpreter (different hash seed) produces the same bytes.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.unit.swarm.test_envelope import _fixed_env, _ident;"
        "from swarm.envelope import canonical_bytes;"
        "print(canonical_bytes(_fixed_env(_ident().public_bytes)).hex())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert out.stdout.strip() == a.hex()


def test_every_single_bit_flip_in_body_or_signature_fails():
    ident = _ident()
    env = Envelope(v=1, swarm="s", sender=ident.public_bytes, seq=1, created_at=1.0,
                   task=WireTask("r", "d", "{}", 0, 0), completions=["a"], finished=[True], logprobs=None,
                   model_id="", reward_claims=[])
    body = canonical_bytes(env)
    sig = ident.sign(body)
    decode(_wrap(body, sig), MAX_C, MAX_D)  # the unmodified wrapper is fine
    blob = body + sig
    n_bits = len(blob) * 8
    assert n_bits > 1500
    reasons = set()
    for bit in range(n_bits):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        b, s = bytes(flipped[: len(body)]), bytes(flipped[len(body):])
        assert not Identity.verify(ident.public_bytes, s, b), bit
        reasons.add(_reason(_wrap(b, s)))
    assert "bad_signature" in reasons
    assert reasons <= {"bad_signature", "schema", "undecodable"}


def test_swapped_sender_key_fails():
    a, b = _ident(), Identity.generate()
    env = _fixed_env(a.public_bytes)
    body = canonical_bytes(env)
    sig = a.sign(body)
    swapped = msgspec.structs.replace(env, sender=b.public_bytes)
    assert _reason(_wrap(canonical_bytes(swapped), sig)) == "bad_signature"
    # b's signature over a body that names a as sender
    assert _reason(_wrap(body, b.sign(body))) == "bad_signature"


ALTERED = {
    "v": 2, "swarm": "t", "seq": 8, "created_at": 1700000000.5,
    "task": WireTask("reasoning_gym", "basic_arithmetic", "{}", 3, 5),
    "completions": ["b", "<answer>2</answer>"], "finished": [True, True], "logprobs": None,
    "model_id": "n", "reward_claims": [1.0, 1.0],
}


@pytest.mark.parametrize("field", sorted(ALTERED))
def test_each_altered_field_fails(field):
    ident = _ident()
    env = _fixed_env(ident.public_bytes)
    sig = ident.sign(canonical_bytes(env))
    altered = msgspec.structs.replace(env, **{field: ALTERED[field]})
    assert altered != env
    assert _reason(_wrap(canonical_bytes(altered), sig)) == "bad_signature"


def test_task_subfields_altered_fail():
    ident = _ident()
    env = _fixed_env(ident.public_bytes)
    sig = ident.sign(canonical_bytes(env))
    for sub, value in [("source", "x"), ("dataset", "bf"), ("config", '{"a":1}'), ("seed", 4), ("index", 0)]:
        task = msgspec.structs.replace(env.task, **{sub: value})
        altered = msgspec.structs.replace(env, task=task)
        assert _reason(_wrap(canonical_bytes(altered), sig)) == "bad_signature", sub


def test_oversize_compressed_is_rejected_before_decompressing():
    assert _reason(b"\x28\xb5\x2f\xfd" + b"\0" * 2000, max_c=1024) == "oversize"


def _bomb(total: int, declare_size: bool) -> bytes:
    cctx = zstandard.ZstdCompressor(level=1)
    cobj = cctx.compressobj(size=total if declare_size else -1)
    chunk = b"\0" * (1 << 20)
    parts = [cobj.compress(chunk) for _ in range(total // len(chunk))]
    parts.append(cobj.flush())
    return b"".join(parts)


@pytest.mark.parametrize("declare_size", [True, False])
def test_compression_bomb_rejected_without_big_allocation(declare_size):
    bomb = _bomb(256 << 20, declare_size)
    assert len(bomb) < 64 << 10
    frame = zstandard.get_frame_parameters(bomb)
    assert (frame.content_size == 256 << 20) if declare_size else (frame.content_size == zstandard.CONTENTSIZE_UNKNOWN)
    tracemalloc.start()
    try:
        assert _reason(bomb, max_d=MAX_D) == "oversize"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_D  # at most the capped output buffer, never the 256 MiB


def test_decompressed_just_over_cap_is_oversize():
    ident = _ident()
    env = msgspec.structs.replace(_fixed_env(ident.public_bytes), completions=["x" * 5000, "y"])
    payload = encode(env, ident)
    size = len(zstandard.ZstdDecompressor().decompress(payload))
    assert decode(payload, MAX_C, size).envelope == env
    assert _reason(payload, max_d=size - 1) == "oversize"


def test_window_size_is_capped():
    params = zstandard.ZstdCompressionParameters(window_log=27)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = cobj.compress(b"x" * 100) + cobj.flush()
    assert _reason(frame, max_d=4096) in {"undecodable", "oversize"}


@pytest.mark.parametrize("payload", [b"", b"hello", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd" + b"\xff" * 40])
def test_garbage_is_undecodable(payload):
    assert _reason(payload) == "undecodable"


def test_trailing_junk_and_truncation_are_undecodable():
    ident = _ident()
    payload = encode(_fixed_env(ident.public_bytes), ident)
    assert _reason(payload + b"junk") == "undecodable"
    for cut in range(1, len(payload)):
        assert _reason(payload[:cut]) in {"undecodable"}, cut


def test_wrapper_shape_is_checked():
    c = zstandard.ZstdCompressor()
    assert _reason(c.compress(msgspec.msgpack.encode([b"a"]))) == "undecodable"
    assert _reason(c.compress(msgspec.msgpack.encode([b"a", b"b", b"c"]))) == "undecodable"
    assert _reason(c.compress(msgspec.msgpack.encode({"body": b"a", "sig": b"b"}))) == "undecodable"
    assert _reason(c.compress(msgspec.msgpack.encode(["a", "b"]))) == "undecodable"
    assert _reason(_wrap(b"\x80", b"x" * 63)) == "bad_signature"


def _signed_raw(obj, ident) -> bytes:
    body = msgspec.msgpack.Encoder(order="sorted").encode(obj)
    return _wrap(body, ident.sign(body))


def test_schema_violations():
    ident = _ident()
    good = msgspec.to_builtins(_fixed_env(ident.public_bytes))
    good["sender"] = ident.public_bytes
    assert decode(_signed_raw(good, ident), MAX_C, MAX_D).envelope == _fixed_env(ident.public_bytes)
    cases = {
        "extra": {**good, "extra": 1},
        "missing": {k: v for k, v in good.items() if k != "model_id"},
        "wrong_type_seq": {**good, "seq": "7"},
        "wrong_type_completions": {**good, "completions": [1, 2]},
        "wrong_type_finished": {**good, "finished": [1, 0]},
        "float_seq": {**good, "seq": 7.0},
        "task_extra": {**good, "task": {**good["task"], "x": 1}},
        "task_missing": {**good, "task": {k: v for k, v in good["task"].items() if k != "seed"}},
        "short_sender": {**good, "sender": ident.public_bytes[:31]},
        "nan_time": {**good, "created_at": float("nan")},
        "not_a_map": [1, 2, 3],
    }
    for name, obj in cases.items():
        assert _reason(_signed_raw(obj, ident)) == "schema", name


def test_non_canonical_body_is_schema():
    ident = _ident()
    env = _fixed_env(ident.public_bytes)
    # Same content, keys in declaration order instead of sorted order.
    body = msgspec.msgpack.encode(env)
    assert body != canonical_bytes(env)
    assert msgspec.msgpack.decode(body, type=Envelope) == env
    assert _reason(_wrap(body, ident.sign(body))) == "schema"
    # An integer where a float is expected decodes, but is not canonical.
    obj = msgspec.to_builtins(env)
    obj["sender"] = ident.public_bytes
    obj["created_at"] = 1700000000
    assert _reason(_signed_raw(obj, ident)) == "schema"


def test_decode_rejects_non_bytes():
    for junk in (None, "text", 5):
        with pytest.raises(EnvelopeError):
            decode(junk, MAX_C, MAX_D)  # type: ignore[arg-type]
