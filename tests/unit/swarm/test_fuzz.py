"""Fuzzing admission and envelope decoding (a short run of scripts/fuzz.py) and replaying the crafted corpus.

The property (``fuzz.check``): ``admit`` never raises, returns None or a valid group, counts exactly one
outcome under a known reason (never ``internal_error``), and never charges the honest peer whose key the
fuzzer only claims. The long run is ``python scripts/fuzz.py --minutes N``.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

_SPEC = importlib.util.spec_from_file_location("sapo_fuzz", Path(__file__).parents[3] / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz)
fuzz.setup()

from swarm import envelope as wire  # noqa: E402

_SHORT = settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TARGET = fuzz.Target()  # shared on purpose: dedup/replay/reputation state builds up across examples
FILES = fuzz.corpus_files()


@_SHORT
@given(fuzz.cases())
def test_admit_property_holds_on_hostile_inputs(case):
    payload, kind = case
    outcome, problem = fuzz.check(_TARGET, payload, fuzz.sender_id(_TARGET, kind))
    assert problem is None, (outcome, problem, payload[:200])


@_SHORT
@given(fuzz.cases())
def test_decode_raises_only_envelope_error(case):
    payload, _ = case
    try:
        out = wire.decode(payload, 1 << 20, 4 << 20)
    except wire.EnvelopeError as exc:
        assert exc.reason in wire.REASONS
    else:
        assert wire.verify(out.envelope, out.body, out.signature)
        assert wire.canonical_bytes(out.envelope) == out.body


def test_corpus_has_every_reason_and_the_readme_lists_every_file():
    assert len(FILES) >= 40
    expected = {fuzz.file_case(p)[0] for p in FILES} - {None}
    # state-dependent reasons (duplicate, replay, rate_limited, self, ignored_peer) are unit-tested elsewhere
    assert set(fuzz.REASONS) - expected == {"duplicate", "replay", "rate_limited", "self", "ignored_peer"}
    assert "admitted" in expected
    readme = (fuzz.CORPUS / "README.md").read_text()
    for path in FILES:
        assert path.name in readme, f"{path.name} is not listed in tests/fuzz_corpus/README.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_case(path):
    expected, kind = fuzz.file_case(path)
    target = fuzz.Target()
    tracemalloc.start()
    try:
        outcome, problem = fuzz.check(target, path.read_bytes(), fuzz.sender_id(target, kind))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problem is None, problem
    if expected is not None:  # crash-* files saved by scripts/fuzz.py only have to satisfy the property
        assert outcome == expected
    # Bounded work per payload: the 4-million-empty-arrays body used to build ~250 MiB of Python objects.
    assert peak < 24 << 20, f"{peak >> 20} MiB traced while admitting {path.name}"


def test_decode_of_the_regressions():
    by_name = {p.stem: p.read_bytes() for p in FILES}
    # envelope.decode has no compression-ratio cap (admission adds it): the wire caps alone must hold.
    for name, reason in (("oversize--ratio-logprobs-4M-empty-arrays", "schema"),
                         ("oversize--ratio-logprobs-1M-int-floats", "schema"),
                         ("undecodable--deep-nesting-unknown-field", "undecodable")):
        tracemalloc.start()
        try:
            with pytest.raises(wire.EnvelopeError) as exc:
                wire.decode(by_name[name], 1 << 20, 4 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert exc.value.reason == reason and peak < 24 << 20, (name, exc.value.reason, peak >> 20)
    # A NaN claim is not a "different" claim (NaN compares false), so it would slip past false_claims.
    target = fuzz.Target()
    assert fuzz.check(target, by_name["schema--nan-reward-claims"], None)[0] == "schema"
