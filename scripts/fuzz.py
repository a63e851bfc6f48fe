"""Fuzz the admission gate (``Admission.admit``) and the envelope decoder with hostile payloads.

    python scripts/fuzz.py --examples 20000          # hypothesis, structure-aware (default engine)
    python scripts/fuzz.py --minutes 10 --seed 7
    python scripts/fuzz.py --engine atheris --minutes 10   # coverage-guided (pip install atheris)
    python scripts/fuzz.py --replay                  # run tests/fuzz_corpus/ once and check every outcome
    python scripts/fuzz.py --write-corpus            # (re)write the crafted cases into tests/fuzz_corpus/

The property, checked for every input (``check``): ``admit`` never raises; it returns ``None`` or a valid
``RolloutGroup`` (1..max_completions completions, one finite reward per completion, origin a peer id other
than the receiver's, task from the allow-list); exactly one counter moves per call (``admitted`` or one
rejection reason), the reason is a known one and never ``internal_error``; and the honest peer, whose key the
fuzzer claims but never holds, is never charged by the reputation.

Inputs (``cases()``, hypothesis strategies): random bytes; zstd of random bytes and of random msgpack trees;
random ``[body, signature]`` wrappers; and valid envelopes with 0-3 field mutations (wrong types, huge and
negative ints, NaN/inf floats, unicode, nested garbage, deleted and unknown fields, over-long lists) whose
body is then possibly truncated, extended, non-canonically encoded, and usually *re-signed with a valid key*
so it gets past the signature to the deeper checks, or signed by the attacker while claiming the honest
peer's key; wrapped normally or oddly; compressed normally, without content size, split in frames, with
skippable frames, trailing junk, truncated, or not at all; plus prebuilt zstd bombs. The atheris engine feeds
libFuzzer's bytes in as a raw payload, as a zstd-compressed wrapper, or as a body that is signed with a
valid key before wrapping (so coverage guidance explores the decoder past the signature).

Prints inputs tried, findings (target 0) and outcomes by reason; each finding's payload is saved as
``tests/fuzz_corpus/crash-<sha256[:12]>.bin`` (replayed by tests/unit/swarm/test_fuzz.py from then on).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fuzz_corpus"
T0 = 1_700_000_000.0
SWARM = "fuzz-swarm"
ALLOWED = {("reasoning_gym", "basic_arithmetic")}
OWN_CONFIG = "{}"
REASONS = ("ignored_peer", "oversize", "undecodable", "bad_version", "schema", "wrong_swarm", "duplicate",
           "bad_signature", "self", "sender_mismatch", "stale", "future", "replay", "rate_limited",
           "dataset_not_allowed", "config_not_allowed", "task_underivable", "false_claims")
"""Every documented rejection reason (``internal_error`` is deliberately absent: it is a finding)."""


def _load():
    """Import the code under test (separately, so the atheris engine can instrument it)."""
    global msgspec, zstandard, AdmissionConfig, ReputationConfig, Completion, RolloutGroup, TaskRef, resolve
    global Admission, Reputation, wire, Identity, Ed25519PrivateKey
    import msgspec
    import zstandard
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node.config import AdmissionConfig, ReputationConfig
    from node.rollout import Completion, RolloutGroup
    from node.tasks import TaskRef, resolve
    from swarm import envelope as wire
    from swarm.admission import Admission
    from swarm.identity import Identity
    from swarm.reputation import Reputation


# ---------------------------------------------------------------------------------------------------------
# Fixed identities and the target


def identity(name: str):
    """A deterministic key, so corpus files stay valid (signatures) across runs."""
    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"sapo-fuzz/" + name.encode()).digest()))


class Target:
    """A receiver as a node builds it (own configs only), reputation on, frozen clock at ``T0``."""

    def __init__(self, rate_limited: bool = False, ignore_at: float = 1e12, reject_false_claims: bool = True):
        self.receiver, self.attacker, self.honest, self.other = (identity(n) for n in
                                                                  ("receiver", "attacker", "honest", "other"))
        clock = lambda: T0  # noqa: E731
        cfg = AdmissionConfig(reject_false_claims=reject_false_claims)
        if not rate_limited:  # the fuzzer signs everything with one key; a bucket would hide deeper checks
            cfg = cfg.model_copy(update={"rate_per_peer": 1e12, "burst_per_peer": 10**12})
        self.reputation = Reputation(ReputationConfig(ignore_at=ignore_at), clock=clock)
        self.admission = Admission(cfg, SWARM, self.receiver.peer_id, set(ALLOWED), lambda t: t.question + "\n",
                                   clock=clock, own_configs={("reasoning_gym", "basic_arithmetic", OWN_CONFIG)},
                                   reputation=self.reputation)


def check(target: Target, payload, sender) -> tuple[str, str | None]:
    """(outcome, problem): outcome is ``admitted`` or the rejection reason; problem is None unless the
    property is violated (see the module docstring)."""
    adm = target.admission
    before = adm.stats()
    try:
        out = adm.admit(payload, sender)
    except BaseException as exc:  # noqa: BLE001 - the whole point is to catch anything
        return "raised", f"admit raised {type(exc).__name__}: {exc}"
    after = adm.stats()
    moved = {r: n - before["rejected"].get(r, 0) for r, n in after["rejected"].items()
             if n != before["rejected"].get(r, 0)}
    admitted = after["admitted"] - before["admitted"]
    if out is None:
        if admitted != 0 or len(moved) != 1 or list(moved.values()) != [1]:
            return "?", f"rejection not counted exactly once: admitted +{admitted}, reasons {moved}"
        outcome = next(iter(moved))
        if outcome not in REASONS:
            return outcome, f"rejection under an unexpected reason {outcome!r}"
    else:
        outcome = "admitted"
        if admitted != 1 or moved:
            return outcome, f"admission not counted exactly once: admitted +{admitted}, reasons {moved}"
        problem = _check_group(target, out)
        if problem:
            return outcome, problem
    penalty = target.reputation.penalty(target.honest.peer_id)
    if penalty != 0.0:
        return outcome, f"the honest peer was charged ({penalty}) by a payload it never signed"
    return outcome, None


def _check_group(target: Target, g) -> str | None:
    cfg = target.admission.cfg
    if not isinstance(g, RolloutGroup):
        return f"admit returned {type(g).__name__}"
    n = len(g.completions)
    if not 1 <= n <= cfg.max_completions or len(g.rewards) != n:
        return f"{n} completions, {len(g.rewards)} rewards"
    if not all(isinstance(r, float) and math.isfinite(r) for r in g.rewards):
        return f"non-finite or non-float rewards {g.rewards[:8]}"
    if not all(isinstance(c.text, str) and len(c.text) <= cfg.max_completion_chars for c in g.completions):
        return "completion text too long or not a string"
    if not isinstance(g.origin, str) or g.origin == target.receiver.peer_id or not g.origin.startswith("12D3KooW"):
        return f"origin {g.origin!r}"
    if (g.task.ref.source, g.task.ref.dataset) not in ALLOWED or g.task.ref.config != OWN_CONFIG:
        return f"task {g.task.ref} outside the allow-list"
    return None


# ---------------------------------------------------------------------------------------------------------
# Building blocks for payloads


def valid_obj(signer, index: int = 0, seq: int = 1, now: float = T0) -> dict:
    """The builtins (dict) form of a valid envelope signed-to-be by ``signer``; rewards claimed honestly."""
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 11, index))
    texts = [f"<answer>{task.answer}</answer>", "<answer>nope</answer>", "no tags", f"{task.answer}"]
    rewards = [1.0, 0.0, 0.0, 0.0]
    group = RolloutGroup(task=task, prompt="", completions=[Completion(t, finished=True) for t in texts],
                         rewards=rewards, model_id="fuzz-model")
    env = wire.envelope_from_group(group, SWARM, signer, seq, now=now)
    obj = msgspec.to_builtins(env)
    obj["sender"] = env.sender  # to_builtins turns bytes into base64 text
    return obj


def body_bytes(obj, canonical: bool = True) -> bytes:
    if canonical:
        return msgspec.msgpack.Encoder(order="sorted").encode(obj)
    return msgspec.msgpack.encode(obj)


def wrap(body: bytes, sig: bytes) -> bytes:
    return msgspec.msgpack.encode((body, sig))


def zstd(raw: bytes, level: int = 3, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=content_size).compress(raw)


def signed_payload(obj, signer, canonical: bool = True) -> bytes:
    body = body_bytes(obj, canonical)
    return zstd(wrap(body, signer.sign(body)))


def skippable_frame(data: bytes = b"skip") -> bytes:
    return (0x184D2A50).to_bytes(4, "little") + len(data).to_bytes(4, "little") + data


_BOMBS: dict[str, bytes] = {}


def bombs() -> dict[str, bytes]:
    """zstd bombs (built once): content-size declared, streamed without one, a window over the cap."""
    if not _BOMBS:
        zeros = bytes(64 << 20)
        _BOMBS["declared-64MiB"] = zstd(zeros)
        _BOMBS["streamed-64MiB-big-window"] = zstd(zeros, content_size=False)
        small = zstandard.ZstdCompressionParameters.from_level(3, window_log=17, write_content_size=0)
        _BOMBS["streamed-64MiB"] = zstandard.ZstdCompressor(compression_params=small).compress(zeros)
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=30, write_content_size=0)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        _BOMBS["window-log-30"] = cctx.compress(bytes(1 << 20))
        _BOMBS["1000-empty-frames"] = zstd(b"") * 1000
    return _BOMBS


def deep(depth: int = 100_000) -> bytes:
    """msgpack of ``depth`` nested one-element arrays (a few hundred bytes once compressed)."""
    return b"\x91" * depth + b"\xc0"


# ---------------------------------------------------------------------------------------------------------
# Hypothesis strategies


def cases():
    """Strategy of ``(payload, transport_sender_kind)``; kinds: None, "attacker", "other"."""
    from hypothesis import strategies as st

    senders = st.sampled_from([None, None, "attacker", "other"])
    return st.tuples(st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(zstd),
        _trees().map(lambda t: zstd(_encode_any(t))),
        st.tuples(st.binary(max_size=512), st.binary(min_size=60, max_size=68)).map(lambda bs: zstd(wrap(*bs))),
        st.sampled_from(sorted(bombs())).map(lambda k: bombs()[k]),
        _mutated_envelopes(), _mutated_envelopes(), _mutated_envelopes(), _mutated_envelopes(),
    ), senders)


def _encode_any(tree) -> bytes:
    try:
        return msgspec.msgpack.encode(tree)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return b"\xc1"


def _scalars():
    from hypothesis import strategies as st

    return st.one_of(
        st.none(), st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.sampled_from(["", "\x00", "é", "🙂" * 50, "\u202e<answer>1</answer>", "x" * 20_000, "{}", "[]"]),
        st.binary(max_size=40),
        st.sampled_from([b"", bytes(31), bytes(32), bytes(33), bytes(64)]),
    )


def _trees():
    from hypothesis import strategies as st

    return st.recursive(_scalars(), lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.text(max_size=12), c, max_size=4), max_leaves=12)


_FIELDS = ("v", "swarm", "sender", "seq", "created_at", "task", "completions", "finished", "logprobs",
           "model_id", "reward_claims")
_TASK_FIELDS = ("source", "dataset", "config", "seed", "index")


def _field_values(field: str):
    """Type-correct values that probe a field's limits (mixed with garbage by the caller)."""
    from hypothesis import strategies as st

    floats = st.floats(allow_nan=True, allow_infinity=True)
    ints = st.integers(-(2**63), 2**64 - 1)
    texts = st.text(max_size=40)
    return {
        "v": st.sampled_from([0, 1, 2, -1, 2**64 - 1]) | ints,
        "swarm": st.sampled_from([SWARM, "", "other", SWARM + "\x00"]) | texts,
        "sender": st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
        "seq": ints,
        "created_at": st.sampled_from([T0, T0 - 601, T0 + 31, T0 - 599, 0.0, -1e308]) | floats,
        "completions": st.lists(texts, max_size=70) | st.lists(st.sampled_from(["<answer>0</answer>", "x"]),
                                                               min_size=1, max_size=300),
        "finished": st.lists(st.booleans(), max_size=70),
        "logprobs": st.none() | st.lists(st.lists(floats, max_size=8), max_size=8),
        "model_id": texts | st.just("m" * 300),
        "reward_claims": st.lists(floats, max_size=8) | st.sampled_from([[1.0] * 4, [float("nan")] * 4]),
        "source": st.sampled_from(["reasoning_gym", "other"]) | texts,
        "dataset": st.sampled_from(["basic_arithmetic", "base_conversion", "no_such"]) | texts,
        "config": st.sampled_from([OWN_CONFIG, '{"max_terms":2}', "[]", "not json", "{ }", "[" * 5000,
                                   '{"a":' * 2000]) | texts,
        "seed": ints,
        "index": st.sampled_from([0, 1, -1, 2**31 - 2, 2**31 - 1, 2**63 - 1]) | ints,
    }[field]


def _mutated_envelopes():
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        obj = copy.deepcopy(_base_obj(draw(st.integers(0, 20))))
        obj["seq"] = draw(st.integers(0, 2**62))
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["set", "set", "set", "garbage", "delete", "unknown", "task"]))
            field = draw(st.sampled_from(_FIELDS))
            if op == "set":
                obj[field] = draw(_field_values(field)) if field != "task" else draw(_trees())
            elif op == "garbage":
                obj[field] = draw(_trees())
            elif op == "delete":
                obj.pop(field, None)
            elif op == "unknown":
                obj[draw(st.text(max_size=10))] = draw(_trees())
            elif isinstance(obj.get("task"), dict):
                tf = draw(st.sampled_from(_TASK_FIELDS))
                sub = draw(st.sampled_from(["set", "garbage", "delete", "unknown"]))
                if sub == "set":
                    obj["task"][tf] = draw(_field_values(tf))
                elif sub == "garbage":
                    obj["task"][tf] = draw(_trees())
                elif sub == "delete":
                    obj["task"].pop(tf, None)
                else:
                    obj["task"][draw(st.text(max_size=10))] = draw(_trees())
        sign = draw(st.sampled_from(["valid"] * 6 + ["claims_honest", "random_sig", "keep_sender"]))
        if sign == "valid":
            obj["sender"] = TARGET_KEYS["attacker"].public_bytes
        elif sign == "claims_honest":
            obj["sender"] = TARGET_KEYS["honest"].public_bytes
        canonical = draw(st.sampled_from([True] * 5 + [False]))
        try:
            body = body_bytes(obj, canonical)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            body = b"\xc1"
        cut = draw(st.sampled_from(["none"] * 6 + ["truncate", "extend", "flip", "deep"]))
        if cut == "truncate" and body:
            body = body[:draw(st.integers(0, len(body) - 1))]
        elif cut == "extend":
            body += draw(st.binary(min_size=1, max_size=16))
        elif cut == "flip" and body:
            pos = draw(st.integers(0, len(body) - 1))
            body = body[:pos] + bytes([body[pos] ^ (1 << draw(st.integers(0, 7)))]) + body[pos + 1:]
        elif cut == "deep":
            body = b"\x82\xa1v\x01\xa1x" + deep(draw(st.integers(100, 5000)))
        sig = (draw(st.binary(min_size=64, max_size=64)) if sign == "random_sig"
               else TARGET_KEYS["attacker"].sign(body))
        shape = draw(st.sampled_from(["pair"] * 8 + ["single", "triple", "map", "str_body", "short_sig"]))
        raw = {"pair": lambda: wrap(body, sig), "single": lambda: msgspec.msgpack.encode([body]),
               "triple": lambda: msgspec.msgpack.encode([body, sig, b""]),
               "map": lambda: msgspec.msgpack.encode({"body": body, "sig": sig}),
               "str_body": lambda: msgspec.msgpack.encode([body.decode("latin-1"), sig]),
               "short_sig": lambda: wrap(body, sig[:63])}[shape]()
        comp = draw(st.sampled_from(["normal"] * 8 + ["no_size", "frames", "skip_before", "skip_after", "junk",
                                                      "truncated", "raw", "level19"]))
        if comp == "normal":
            return zstd(raw)
        if comp == "no_size":
            return zstd(raw, content_size=False)
        if comp == "frames":
            k = draw(st.integers(0, len(raw)))
            return zstd(raw[:k]) + zstd(raw[k:])
        if comp == "skip_before":
            return skippable_frame() + zstd(raw)
        if comp == "skip_after":
            return zstd(raw) + skippable_frame()
        if comp == "junk":
            return zstd(raw) + draw(st.binary(min_size=1, max_size=8))
        if comp == "truncated":
            data = zstd(raw)
            return data[:draw(st.integers(0, len(data) - 1))]
        if comp == "raw":
            return raw
        return zstd(raw, level=19)

    return build()


TARGET_KEYS: dict = {}
_BASES: dict[int, dict] = {}


def _base_obj(index: int) -> dict:
    # Built once per index outside the draws (resolving a task touches global state hypothesis warns about).
    if index not in _BASES:
        _BASES[index] = valid_obj(TARGET_KEYS["attacker"], index=index)
    return _BASES[index]


def sender_id(target: Target, kind: str | None) -> str | None:
    return None if kind is None else {"attacker": target.attacker, "other": target.other}[kind].peer_id


def setup() -> None:
    _load()
    if not TARGET_KEYS:
        TARGET_KEYS.update({n: identity(n) for n in ("attacker", "honest", "other", "receiver")})
        for index in range(21):
            _base_obj(index)


# ---------------------------------------------------------------------------------------------------------
# The crafted corpus


def crafted() -> dict[str, tuple[bytes, str | None]]:
    """name -> (payload, transport sender kind). Names are ``<expected outcome>--<what it tests>``."""
    setup()
    atk, honest = TARGET_KEYS["attacker"], TARGET_KEYS["honest"]
    ok = valid_obj(atk, seq=1)

    def var(n, **changes):  # n: a distinct seq, so that no case is a replay of another
        return {**ok, "seq": n, **changes}

    def body_signed(body):
        return zstd(wrap(body, atk.sign(body)))

    # Bodies whose containers expand into many Python objects; compressed ~150 bytes (over the compression
    # ratio cap), or padded with incompressible bytes so that they get past it to the wire caps.
    lp4m = b"\x81\xa8logprobs\xdd" + (4_000_000).to_bytes(4, "big") + b"\x90" * 4_000_000
    lp1m = b"\x81\xa8logprobs\xdc\x01\x00" + (b"\xdc\x10\x00" + bytes(4096)) * 256

    def padded(body, n):  # {"a": <n incompressible bytes>, <body's one field>}
        noise = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))[:n]
        return b"\x82\xa1a" + msgspec.msgpack.encode(noise) + body[1:]

    out = {
        "admitted--valid-envelope": (signed_payload(ok, atk), None),
        "admitted--unicode-completions": (signed_payload(var(2, completions=["🙂" * 100, "\u202e<answer>x",
                                                                              "\x00", "é" * 10],
                                                                            reward_claims=[0.0] * 4), atk), None),
        "admitted--seq-uint64-max": (signed_payload(var(2**64 - 1), atk), None),
        "admitted--skippable-frame-before": (skippable_frame() + signed_payload(var(4), atk), None),
        "oversize--zstd-bomb-declared-64MiB": (bombs()["declared-64MiB"], None),
        "oversize--zstd-bomb-streamed-64MiB": (bombs()["streamed-64MiB"], None),
        "undecodable--zstd-bomb-streamed-window-over-cap": (bombs()["streamed-64MiB-big-window"], None),
        "undecodable--zstd-window-log-30": (bombs()["window-log-30"], None),
        "undecodable--1000-empty-zstd-frames": (bombs()["1000-empty-frames"], None),
        "undecodable--not-zstd": (b"\x00\x01garbage", None),
        "undecodable--trailing-junk": (signed_payload(var(5), atk) + b"junk", None),
        "undecodable--truncated-frame": (signed_payload(var(6), atk)[:-7], None),
        "undecodable--skippable-frame-only": (skippable_frame(), None),
        "undecodable--wrapper-three-elements": (zstd(msgspec.msgpack.encode([b"a", bytes(64), b""])), None),
        "undecodable--wrapper-body-is-str": (zstd(msgspec.msgpack.encode(["body", bytes(64)])), None),
        "undecodable--deep-nesting-wrapper": (zstd(b"\x92" + deep() + b"\xc4\x00"), None),
        "undecodable--invalid-utf8-completion": (
            body_signed(body_bytes(var(7, completions=["AAAA"] * 4)).replace(b"\xa4AAAA", b"\xa4\xff\xfe\xfd\xfc")),
            None),
        "undecodable--deep-nesting-unknown-field": (body_signed(b"\x82\xa1v\x01\xa1x" + deep()), None),
        "oversize--ratio-logprobs-4M-empty-arrays": (zstd(wrap(lp4m, bytes(64))), None),
        "oversize--ratio-logprobs-1M-int-floats": (zstd(wrap(lp1m, bytes(64))), None),
        "schema--logprobs-4M-empty-arrays-padded": (zstd(wrap(padded(lp4m, 17_000), bytes(64))), None),
        "schema--logprobs-1M-int-floats-padded": (zstd(wrap(padded(lp1m, 5_000), bytes(64))), None),
        "schema--300-completions-over-wire-cap": (
            signed_payload(var(8, completions=["x"] * 300, finished=[True] * 300, reward_claims=[]), atk), None),
        "schema--65-completions-over-limit": (
            signed_payload(var(9, completions=["x"] * 65, finished=[True] * 65, reward_claims=[]), atk), None),
        "schema--nan-reward-claims": (signed_payload(var(10, reward_claims=[float("nan")] * 4), atk), None),
        "schema--non-canonical-body": (signed_payload(var(11), atk, canonical=False), None),
        "schema--sender-31-bytes": (signed_payload(var(12, sender=atk.public_bytes[:31]), atk), None),
        "schema--seq-as-string": (signed_payload(var(13, seq="13"), atk), None),
        "schema--created-at-nan": (signed_payload(var(14, created_at=float("nan")), atk), None),
        "schema--negative-seq": (signed_payload(var(-1), atk), None),
        "schema--unknown-field": (signed_payload(var(15, extra=[1, {"a": None}]), atk), None),
        "schema--config-over-wire-cap": (
            signed_payload(var(16, task={**ok["task"], "config": " " * 5000}), atk), None),
        "bad_version--v2": (signed_payload(var(17, v=2), atk), None),
        "bad_version--v3-new-layout": (signed_payload({"v": 3, "anything": [1, 2]}, atk), None),
        "wrong_swarm--other-swarm": (signed_payload(var(18, swarm="other-swarm"), atk), None),
        "bad_signature--claims-honest-key": (signed_payload(var(19, sender=honest.public_bytes), atk), None),
        "bad_signature--signature-63-bytes": (zstd(wrap(body_bytes(var(20)), bytes(63))), None),
        "bad_signature--zero-signature": (zstd(wrap(body_bytes(var(21)), bytes(64))), None),
        "stale--created-601s-ago": (signed_payload(var(22, created_at=T0 - 601), atk), None),
        "future--created-31s-ahead": (signed_payload(var(23, created_at=T0 + 31), atk), None),
        "sender_mismatch--delivered-as-other": (signed_payload(var(24), atk), "other"),
        "dataset_not_allowed--base-conversion": (
            signed_payload(var(25, task={**ok["task"], "dataset": "base_conversion"}), atk), None),
        "config_not_allowed--other-config": (
            signed_payload(var(26, task={**ok["task"], "config": '{"max_terms":2}'}), atk), None),
        "task_underivable--negative-index": (signed_payload(var(27, task={**ok["task"], "index": -1}), atk), None),
        "task_underivable--index-2pow63": (
            signed_payload(var(28, task={**ok["task"], "index": 2**63 - 1}), atk), None),
        "false_claims--all-claimed-correct": (signed_payload(var(29, reward_claims=[1.0] * 4), atk), None),
    }
    return out


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


def file_case(path: Path) -> tuple[str | None, str | None]:
    """(expected outcome or None for crash-* files, transport sender kind) of a corpus file."""
    name = path.stem
    if name.startswith("crash-"):
        return None, None
    expected = name.split("--", 1)[0]
    return expected, "other" if name.endswith("delivered-as-other") else None


def write_corpus() -> None:
    setup()
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, (payload, _) in crafted().items():
        (CORPUS / f"{name}.bin").write_bytes(payload)
        print(f"{len(payload):>8} B  {name}.bin")


def replay() -> int:
    """Check every corpus file (fresh target each); returns the number of failures."""
    setup()
    failures = 0
    for path in corpus_files():
        expected, kind = file_case(path)
        target = Target()
        t = time.process_time()
        outcome, problem = check(target, path.read_bytes(), sender_id(target, kind))
        ms = (time.process_time() - t) * 1e3
        bad = problem is not None or (expected is not None and outcome != expected)
        failures += bad
        print(f"{'FAIL' if bad else 'ok  '} {outcome:<20} {ms:7.1f} ms  {path.name}  {problem or ''}")
    return failures


# ---------------------------------------------------------------------------------------------------------
# Engines


class _Run:
    def __init__(self):
        self.setup_target()
        self.tried = 0
        self.outcomes: Counter[str] = Counter()
        self.findings: list[str] = []
        self.started = self.last_progress = time.monotonic()

    def setup_target(self):
        self.target = Target()

    def one(self, payload, kind) -> None:
        self.tried += 1
        outcome, problem = check(self.target, payload, sender_id(self.target, kind))
        self.outcomes[outcome] += 1
        if problem is not None:
            digest = hashlib.sha256(bytes(payload) if isinstance(payload, (bytes, bytearray)) else b"").hexdigest()
            path = CORPUS / f"crash-{digest[:12]}.bin"
            CORPUS.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(payload))
            self.findings.append(f"{problem} -> {path.name}")
            print(f"FINDING: {problem} (saved {path})", flush=True)
        if time.monotonic() - self.last_progress > 15:
            self.last_progress = time.monotonic()
            self.report(progress=True)

    def report(self, progress: bool = False) -> None:
        dt = time.monotonic() - self.started
        line = f"{self.tried} inputs in {dt:.0f} s ({self.tried / max(dt, 1e-9):.0f}/s), {len(self.findings)} findings"
        if progress:
            print(line, flush=True)
            return
        a = self.target.admission
        print(line)
        print(f"  receiver state: {len(a._digests)} digests, {a._n_seqs} seqs of {len(a._seqs)} signers, "
              f"{len(a._buckets)} buckets, {len(self.target.reputation._peers)} reputation entries")
        for outcome, n in self.outcomes.most_common():
            print(f"  {outcome:<22} {n}")
        for f in self.findings:
            print(f"  finding: {f}")


class _TimeUp(Exception):
    pass


def run_hypothesis(examples: int, seconds: float, seed: int) -> _Run:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    setup()
    run = _Run()
    deadline = time.monotonic() + seconds

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def prop(case):
        if time.monotonic() > deadline:
            raise _TimeUp
        run.one(*case)

    try:
        prop()
    except _TimeUp:
        pass
    return run


def run_atheris(seconds: float, runs: int) -> None:
    import atheris

    with atheris.instrument_imports(include=["swarm", "node.tasks"]):
        setup()
    run = _Run()
    atk = TARGET_KEYS["attacker"]
    deadline = time.monotonic() + seconds

    def one_input(data: bytes) -> None:
        if time.monotonic() > deadline or (runs and run.tried >= runs):
            # libFuzzer ends the process without running Python's exit hooks: report and stop here.
            run.report()
            sys.stdout.flush()
            os._exit(1 if run.findings else 0)
        if not data:
            return
        mode, data = data[0] % 4, data[1:]
        if mode == 0:
            payload = data  # raw bytes into admit
        elif mode == 1:
            payload = zstd(data)  # explores the [body, signature] wrapper
        else:
            payload = zstd(wrap(data, atk.sign(data)))  # a validly signed body: explores past the signature
        run.one(payload, None if mode != 3 else "attacker")

    seeds = Path(os.environ.get("TMPDIR", "/tmp")) / f"sapo-fuzz-seeds-{os.getpid()}"
    seeds.mkdir(exist_ok=True)
    for name, (payload, _) in crafted().items():
        try:
            body, _sig = wire.unwrap(payload, 1 << 20, 4 << 20)
            (seeds / f"{name}.body").write_bytes(b"\x02" + body)
        except wire.EnvelopeError:
            (seeds / f"{name}.raw").write_bytes(b"\x00" + payload[:4096])
    args = [sys.argv[0], str(seeds), "-rss_limit_mb=4096", "-max_len=65536"]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    ap.add_argument("--examples", type=int, default=None, help="inputs to try (default: unbounded with --minutes)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default 1 without --examples)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", action="store_true", help="check the corpus and exit")
    ap.add_argument("--write-corpus", action="store_true", help="(re)write the crafted cases and exit")
    args = ap.parse_args(argv)
    if args.write_corpus:
        write_corpus()
        return 0
    if args.replay:
        return 1 if replay() else 0
    minutes = args.minutes if args.minutes is not None else (1e9 if args.examples else 1.0)
    if args.engine == "atheris":
        run_atheris(minutes * 60, args.examples or 0)
        return 0
    run = run_hypothesis(args.examples or 10**9, minutes * 60, args.seed)
    run.report()
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
