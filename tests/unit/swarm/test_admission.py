"""Admission: one crafted input per rejection reason, honest envelopes re-scored locally, and fuzzing."""

from __future__ import annotations

import logging

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.config import AdmissionConfig
from node.rollout import Completion, RolloutGroup
from node.tasks import TaskRef, resolve
from swarm import admission as adm
from swarm.admission import Admission
from swarm.envelope import WireTask, canonical_bytes, encode, envelope_from_group
from swarm.identity import Identity

SWARM = "test-swarm"
T0 = 1_700_000_000.0
ALLOWED = {("reasoning_gym", "basic_arithmetic")}


def prompt_for(task):
    return task.question + "\n"


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_admission(cfg: AdmissionConfig | None = None, own: str | None = None, clock: FakeClock | None = None,
                   allowed=ALLOWED, prompt=prompt_for) -> Admission:
    # Most tests craft groups whose claimed rewards are arbitrary; the false-claims check has its own tests.
    cfg = cfg or AdmissionConfig()
    if "reject_false_claims" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"reject_false_claims": False})
    return Admission(cfg, SWARM, own or Identity.generate().peer_id, set(allowed), prompt,
                     clock=clock or FakeClock())


def make_group(index: int = 0, texts: list[str] | None = None, rewards: list[float] | None = None,
               dataset: str = "basic_arithmetic", config: dict | None = None) -> RolloutGroup:
    task = resolve(TaskRef.make("reasoning_gym", dataset, config or {}, 11, index))
    if texts is None:
        texts = [f"<answer>{task.answer}</answer>", "<answer>nope</answer>", "no tags", f"{task.answer}"]
    comps = [Completion(t, finished=i % 2 == 0) for i, t in enumerate(texts)]
    return RolloutGroup(task=task, prompt=prompt_for(task), completions=comps,
                        rewards=rewards if rewards is not None else [1.0] * len(texts), model_id="tiny-model")


def payload(ident: Identity, seq: int = 1, now: float = T0, group: RolloutGroup | None = None, **changes) -> bytes:
    env = envelope_from_group(group or make_group(abs(seq)), SWARM, ident, seq, now=now)
    if changes:
        env = msgspec.structs.replace(env, **changes)
    return encode(env, ident)


def reject_reason(a: Admission, data, sender: str | None = None) -> str:
    before = dict(a.stats()["rejected"])
    assert a.admit(data, sender) is None
    after = a.stats()["rejected"]
    changed = [r for r in after if after[r] != before.get(r, 0)]
    assert len(changed) == 1 and after[changed[0]] == before.get(changed[0], 0) + 1
    return changed[0]


# --------------------------------------------------------------------------------------------------------


def test_honest_envelope_admitted_and_rescored_locally():
    ident = Identity.generate()
    a = make_admission()
    g = make_group(3)
    answer = g.task.answer
    wrong = str(int(answer) + 1)
    texts = [f"<answer>{wrong}</answer>"] * 6 + [f"think <answer>{answer}</answer>", "garbage"]
    g = make_group(3, texts=texts, rewards=[1.0] * 8)  # the sender claims every answer is right
    out = a.admit(payload(ident, seq=1, group=g), ident.peer_id)
    assert isinstance(out, RolloutGroup)
    assert out.rewards == [0.0] * 6 + [1.0, 0.0]
    assert out.origin == ident.peer_id and not out.is_local
    assert out.model_id == "tiny-model"
    assert out.task.ref == g.task.ref and out.task.answer == answer
    assert out.prompt == g.task.question + "\n"
    assert [c.text for c in out.completions] == texts
    assert [c.finished for c in out.completions] == [i % 2 == 0 for i in range(8)]
    assert all(c.token_ids is None and c.logprobs is None for c in out.completions)
    assert a.stats() == {"admitted": 1, "rejected": {}}


def test_transport_sender_optional():
    ident = Identity.generate()
    a = make_admission()
    assert a.admit(payload(ident, seq=1)) is not None


def test_oversize():
    a = make_admission()
    assert reject_reason(a, b"\x28\xb5\x2f\xfd" + bytes(2 << 20)) == "oversize"
    bomb = zstandard.ZstdCompressor().compress(bytes(8 << 20))
    assert reject_reason(a, bomb) == "oversize"


def test_undecodable():
    a = make_admission()
    assert reject_reason(a, b"hello") == "undecodable"
    assert reject_reason(a, zstandard.ZstdCompressor().compress(b"\xc1")) == "undecodable"
    assert reject_reason(a, None) == "undecodable"  # type: ignore[arg-type]


def _signed_raw(obj, ident: Identity) -> bytes:
    body = msgspec.msgpack.Encoder(order="sorted").encode(obj)
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, ident.sign(body))))


def test_schema_decode():
    ident = Identity.generate()
    a = make_admission()
    env = envelope_from_group(make_group(), SWARM, ident, 1, now=T0)
    obj = msgspec.to_builtins(env)
    obj["sender"] = ident.public_bytes
    assert reject_reason(a, _signed_raw({**obj, "extra": True}, ident)) == "schema"
    assert reject_reason(a, _signed_raw({**obj, "seq": "1"}, ident)) == "schema"


@pytest.mark.parametrize("change", [
    {"completions": [f"<answer>{i}</answer>" for i in range(65)], "finished": [True] * 65},
    {"completions": [], "finished": []},
    {"finished": [True]},
    {"logprobs": [[-1.0]]},
    {"completions": ["x" * 16385] + ["a"] * 3},
    {"reward_claims": [1.0, 1.0]},
    {"reward_claims": [float("nan")] * 4},  # NaN never compares "different": it would dodge false_claims
    {"completions": ["x"] * 300, "finished": [True] * 300, "reward_claims": []},  # over the wire cap
    {"seq": -1},
    {"model_id": "m" * 300},
])
def test_schema_limits(change):
    ident = Identity.generate()
    a = make_admission()
    assert reject_reason(a, payload(ident, **change)) == "schema"


def test_bad_version():
    ident = Identity.generate()
    a = make_admission()
    assert reject_reason(a, payload(ident, v=2)) == "bad_version"
    # A future version with a different layout is still recognised as a version problem.
    env = envelope_from_group(make_group(), SWARM, ident, 1, now=T0)
    obj = msgspec.to_builtins(env)
    obj.update(v=3, new_field=[1, 2])
    assert reject_reason(a, _signed_raw(obj, ident)) == "bad_version"


def test_wrong_swarm():
    ident = Identity.generate()
    a = make_admission()
    assert reject_reason(a, payload(ident, swarm="other")) == "wrong_swarm"


def test_bad_signature():
    ident, other = Identity.generate(), Identity.generate()
    a = make_admission()
    env = envelope_from_group(make_group(), SWARM, ident, 1, now=T0)
    body = canonical_bytes(env)
    forged = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, other.sign(body))))
    assert reject_reason(a, forged, ident.peer_id) == "bad_signature"
    # The forgery did not touch the honest signer's state: the real envelope is admitted afterwards.
    assert a.admit(encode(env, ident), ident.peer_id) is not None


def test_self():
    ident = Identity.generate()
    a = make_admission(own=ident.peer_id)
    assert reject_reason(a, payload(ident)) == "self"


def test_sender_mismatch():
    ident = Identity.generate()
    a = make_admission()
    assert reject_reason(a, payload(ident), Identity.generate().peer_id) == "sender_mismatch"


def test_stale_and_future():
    ident = Identity.generate()
    clock = FakeClock()
    cfg = AdmissionConfig(max_age_s=600, max_future_s=30)
    a = make_admission(cfg, clock=clock)
    assert reject_reason(a, payload(ident, seq=1, now=T0 - 601)) == "stale"
    assert reject_reason(a, payload(ident, seq=2, now=T0 + 31)) == "future"
    assert a.admit(payload(ident, seq=3, now=T0 - 599)) is not None
    assert a.admit(payload(ident, seq=4, now=T0 + 29)) is not None
    clock.t = T0 + 10_000
    assert reject_reason(a, payload(ident, seq=5, now=T0)) == "stale"


def test_duplicate():
    ident = Identity.generate()
    a = make_admission()
    p = payload(ident, seq=1)
    assert a.admit(p) is not None
    assert reject_reason(a, p) == "duplicate"
    # Same body, recompressed differently: still the same envelope.
    raw = zstandard.ZstdDecompressor().decompress(p)
    assert reject_reason(a, zstandard.ZstdCompressor(level=19).compress(raw)) == "duplicate"


def test_replay_same_seq_other_body():
    ident = Identity.generate()
    a = make_admission()
    assert a.admit(payload(ident, seq=1, group=make_group(1))) is not None
    assert reject_reason(a, payload(ident, seq=1, group=make_group(2))) == "replay"
    assert a.admit(payload(ident, seq=2, group=make_group(2))) is not None


def test_rate_limited_per_peer_token_bucket():
    honest, flooder = Identity.generate(), Identity.generate()
    clock = FakeClock()
    a = make_admission(AdmissionConfig(rate_per_peer=60, burst_per_peer=3), clock=clock)
    for seq in range(3):
        assert a.admit(payload(flooder, seq=seq)) is not None
    assert reject_reason(a, payload(flooder, seq=3)) == "rate_limited"
    # Another peer has its own budget.
    assert a.admit(payload(honest, seq=0)) is not None
    # 60/min = one token per second.
    clock.t += 1.0
    assert a.admit(payload(flooder, seq=4)) is not None
    assert reject_reason(a, payload(flooder, seq=5)) == "rate_limited"


def test_forged_envelopes_do_not_spend_an_honest_budget():
    honest, forger = Identity.generate(), Identity.generate()
    a = make_admission(AdmissionConfig(rate_per_peer=1, burst_per_peer=1))
    for seq in range(20):
        env = envelope_from_group(make_group(seq), SWARM, honest, seq + 100, now=T0)
        body = canonical_bytes(env)
        forged = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, forger.sign(body))))
        assert reject_reason(a, forged, honest.peer_id) == "bad_signature"
        assert reject_reason(a, payload(honest, seq=seq, swarm="x")) == "wrong_swarm"
        assert reject_reason(a, payload(honest, seq=seq, now=T0 - 10_000)) == "stale"
    assert a.admit(payload(honest, seq=1000), honest.peer_id) is not None


def test_dataset_not_allowed():
    ident = Identity.generate()
    a = make_admission()
    g = make_group(0, dataset="base_conversion", texts=["<answer>1</answer>"], rewards=[1.0])
    assert reject_reason(a, payload(ident, group=g)) == "dataset_not_allowed"


def test_allowed_datasets_config_overrides_allowed():
    ident = Identity.generate()
    a = make_admission(AdmissionConfig(allowed_datasets=["reasoning_gym/base_conversion"]))
    assert reject_reason(a, payload(ident, seq=1)) == "dataset_not_allowed"  # basic_arithmetic no longer
    g = make_group(0, dataset="base_conversion", texts=["<answer>1</answer>"], rewards=[1.0])
    assert a.admit(payload(ident, seq=2, group=g)) is not None


@pytest.mark.parametrize("task", [
    WireTask("reasoning_gym", "basic_arithmetic", "{}", 11, -1),
    WireTask("reasoning_gym", "basic_arithmetic", '{"no_such_knob":1}', 11, 0),
    WireTask("reasoning_gym", "basic_arithmetic", "not json", 11, 0),
    WireTask("reasoning_gym", "basic_arithmetic", "[]", 11, 0),
    WireTask("reasoning_gym", "basic_arithmetic", '{"max_terms": 2}', 11, 0),  # not canonical
    WireTask("reasoning_gym", "basic_arithmetic", '{"max_digits":5000,"min_digits":5000}', 11, 0),
])
def test_task_underivable(task):
    ident = Identity.generate()
    a = make_admission()
    assert reject_reason(a, payload(ident, task=task)) == "task_underivable"


def test_unknown_dataset_allowed_by_config_is_underivable():
    ident = Identity.generate()
    a = make_admission(AdmissionConfig(allowed_datasets=["reasoning_gym/no_such_dataset", "bogus"]))
    task = WireTask("reasoning_gym", "no_such_dataset", "{}", 1, 0)
    assert reject_reason(a, payload(ident, task=task)) == "task_underivable"


def test_internal_error_is_caught_and_counted(caplog):
    ident = Identity.generate()

    def broken_prompt(task):
        raise RuntimeError("boom")

    a = make_admission(prompt=broken_prompt)
    with caplog.at_level(logging.WARNING, logger="swarm.admission"):
        assert reject_reason(a, payload(ident)) == "internal_error"
    assert "boom" in caplog.text


def test_rejections_logged_at_debug_with_reason_and_peer(caplog):
    ident = Identity.generate()
    a = make_admission()
    with caplog.at_level(logging.DEBUG, logger="swarm.admission"):
        a.admit(payload(ident, swarm="elsewhere"), "12D3KooWtransport")
        a.admit(payload(ident, seq=2), "12D3KooWother")
    assert "wrong_swarm" in caplog.text and "12D3KooWtransport" in caplog.text
    assert "sender_mismatch" in caplog.text and ident.peer_id in caplog.text


def test_caches_are_bounded(monkeypatch):
    monkeypatch.setattr(adm, "MAX_DIGESTS", 5)
    monkeypatch.setattr(adm, "SEQS_PER_PEER", 3)
    monkeypatch.setattr(adm, "MAX_TRACKED_PEERS", 4)
    a = make_admission(AdmissionConfig(burst_per_peer=1000, rate_per_peer=1000))
    idents = [Identity.generate() for _ in range(6)]
    g = make_group(0)
    for ident in idents:
        for seq in range(5):
            assert a.admit(payload(ident, seq=seq, group=g)) is not None
    assert len(a._digests) <= 5
    assert len(a._seqs) <= 4 and all(len(s) <= 3 for s in a._seqs.values())
    assert len(a._buckets) <= 4


# --------------------------------------------------------------------------------------------------------
# Fuzzing: hostile bytes never raise, never get admitted, never hit an internal error.

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_FUZZ_ADMISSION = make_admission(AdmissionConfig(burst_per_peer=64, rate_per_peer=1e6))


def _assert_rejected(a: Admission, data: bytes, sender: str | None = None) -> None:
    before = a.stats()["admitted"]
    assert a.admit(data, sender) is None
    stats = a.stats()
    assert stats["admitted"] == before
    assert "internal_error" not in stats["rejected"], stats


@_FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_admitted(data):
    _assert_rejected(_FUZZ_ADMISSION, data)


@_FUZZ
@given(st.binary(max_size=2048))
def test_random_zstd_payloads_never_admitted(data):
    _assert_rejected(_FUZZ_ADMISSION, zstandard.ZstdCompressor().compress(data))


@_FUZZ
@given(st.binary(max_size=1024), st.binary(min_size=64, max_size=64))
def test_random_wrapped_bodies_never_admitted(body, sig):
    raw = msgspec.msgpack.encode((body, sig))
    _assert_rejected(_FUZZ_ADMISSION, zstandard.ZstdCompressor().compress(raw))


_MUT_IDENT = Identity.generate()
_MUT_ADMISSION = make_admission(AdmissionConfig(burst_per_peer=64, rate_per_peer=1e6, reject_false_claims=False))
_MUT_PAYLOAD = payload(_MUT_IDENT, seq=1)
_MUT_RAW = zstandard.ZstdDecompressor().decompress(_MUT_PAYLOAD)
assert _MUT_ADMISSION.admit(_MUT_PAYLOAD) is not None


def _mutate(data: bytes, op: int, pos: int, val: int) -> bytes:
    if not data:
        return bytes([val])
    pos %= len(data)
    if op == 0:  # flip one bit
        b = bytearray(data)
        b[pos] ^= 1 << (val % 8)
        return bytes(b)
    if op == 1:  # truncate
        return data[:pos]
    if op == 2:  # insert a byte
        return data[:pos] + bytes([val]) + data[pos:]
    if op == 3:  # delete a byte
        return data[:pos] + data[pos + 1:]
    b = bytearray(data)  # overwrite a byte
    b[pos] = val
    return bytes(b)


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                max_size=4))
def test_mutated_compressed_payload_never_admitted(ops):
    data = _MUT_PAYLOAD
    for op in ops:
        data = _mutate(data, *op)
    _assert_rejected(_MUT_ADMISSION, data)


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                max_size=4))
def test_mutated_inner_bytes_never_admitted(ops):
    raw = _MUT_RAW
    for op in ops:
        raw = _mutate(raw, *op)
    _assert_rejected(_MUT_ADMISSION, zstandard.ZstdCompressor().compress(raw))
    _assert_rejected(_MUT_ADMISSION, zstandard.ZstdCompressor().compress(raw), _MUT_IDENT.peer_id)


def test_every_bit_flip_of_the_inner_wrapper_rejected():
    a = make_admission()
    ident = Identity.generate()
    p = payload(ident, seq=1)
    assert a.admit(p) is not None
    raw = zstandard.ZstdDecompressor().decompress(p)
    cctx = zstandard.ZstdCompressor(level=1)
    for bit in range(0, len(raw) * 8, 3):
        b = bytearray(raw)
        b[bit // 8] ^= 1 << (bit % 8)
        _assert_rejected(a, cctx.compress(bytes(b)))
    assert a.stats()["admitted"] == 1


def test_admit_never_raises_on_odd_argument_types():
    a = make_admission()
    for junk in (None, "str", 123, bytearray(b"\x28\xb5\x2f\xfd"), memoryview(b"abc"), object()):
        assert a.admit(junk) is None  # type: ignore[arg-type]
        assert a.admit(payload(Identity.generate()), 42) is None  # type: ignore[arg-type]
    assert "internal_error" not in a.stats()["rejected"]


def test_foreign_task_config_rejected_unless_enabled():
    from node.config import AdmissionConfig
    from node.rollout import Completion, RolloutGroup
    from node.tasks import TaskRef, canonical_config, resolve
    from swarm.admission import Admission
    from swarm.envelope import encode, envelope_from_group
    from swarm.identity import Identity

    ours = {"min_terms": 2, "max_terms": 2}
    theirs = {"min_terms": 2, "max_terms": 5}
    peer = Identity.generate()

    def payload(conf, seq):
        task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", conf, 1, seq))
        g = RolloutGroup(task=task, prompt="", rewards=[],
                         completions=[Completion(text="<answer>1</answer>"), Completion(text="x")])
        return encode(envelope_from_group(g, "s", peer, seq), peer)

    own = {("reasoning_gym", "basic_arithmetic", canonical_config(ours))}
    strict = Admission(AdmissionConfig(), "s", "me", {("reasoning_gym", "basic_arithmetic")},
                       prompt_for=lambda t: t.question, own_configs=own)
    assert strict.admit(payload(ours, 1)) is not None
    assert strict.admit(payload(theirs, 2)) is None
    assert strict.stats()["rejected"] == {"config_not_allowed": 1}
    loose = Admission(AdmissionConfig(foreign_task_configs=True), "s", "me",
                      {("reasoning_gym", "basic_arithmetic")}, prompt_for=lambda t: t.question, own_configs=own)
    assert loose.admit(payload(theirs, 3)) is not None


def test_false_reward_claims_rejected_by_default():
    ident = Identity.generate()
    a = make_admission(AdmissionConfig(reject_false_claims=True))
    g = make_group(3)
    right = f"<answer>{g.task.answer}</answer>"
    lying = make_group(3, texts=[right, "<answer>nope</answer>"], rewards=[1.0, 1.0])
    assert reject_reason(a, payload(ident, seq=1, group=lying), ident.peer_id) == "false_claims"
    honest = make_group(3, texts=[right, "<answer>nope</answer>"], rewards=[1.0, 0.0])
    assert a.admit(payload(ident, seq=2, group=honest), ident.peer_id) is not None
    no_claims = make_group(3, texts=[right, "<answer>nope</answer>"], rewards=[])
    assert a.admit(payload(ident, seq=3, group=no_claims), ident.peer_id) is not None


def test_remembered_seqs_are_bounded_in_total(monkeypatch):
    monkeypatch.setattr(adm, "SEQS_PER_PEER", 3)
    monkeypatch.setattr(adm, "MAX_TRACKED_PEERS", 100)
    monkeypatch.setattr(adm, "MAX_REMEMBERED_SEQS", 7)
    a = make_admission(AdmissionConfig(burst_per_peer=1000, rate_per_peer=1000))
    idents = [Identity.generate() for _ in range(6)]
    for ident in idents:
        for seq in range(5):
            assert a.admit(payload(ident, seq=seq)) is not None
            assert a._n_seqs == sum(len(s) for s in a._seqs.values()) <= 7
    assert all(len(s) <= 3 for s in a._seqs.values())
    assert list(a._seqs)[-1] == idents[-1].peer_id and len(a._seqs[idents[-1].peer_id]) == 3
    # the newest signer's window is intact: a reused seq with another body is still a replay
    assert reject_reason(a, payload(idents[-1], seq=4, group=make_group(9))) == "replay"


def test_compression_ratio_is_capped_beyond_the_free_size():
    import random as _random

    ident = Identity.generate()
    a = make_admission()
    big = ["a" * 16_000] * 32  # ~512 KiB of text that compresses ~1000x
    assert reject_reason(a, payload(ident, seq=1, group=make_group(0, texts=big, rewards=[0.0] * 32))) == "oversize"
    rng = _random.Random(0)
    words = ["".join(rng.choice("abcdefghij ") for _ in range(16_000)) for _ in range(32)]  # ~2.5x
    assert a.admit(payload(ident, seq=2, group=make_group(0, texts=words, rewards=[0.0] * 32))) is not None
    assert a.admit(payload(ident, seq=3, group=make_group(0, texts=["a" * 16_000] * 4, rewards=[0.0] * 4))) \
        is not None  # 64 KiB of repetition: under RATIO_FREE_BYTES
