"""Reputation: failures -> sampled less -> ignored; decay -> recovery; forgeries cannot spoil an honest peer."""

from __future__ import annotations

import random

import msgspec
import zstandard
from test_admission import SWARM, T0, FakeClock, make_admission, make_group, payload

from node.config import AdmissionConfig, PoolConfig, ReputationConfig, SwarmConfig
from node.rollout import Completion, RolloutGroup
from swarm import admission as adm
from swarm import reputation as repmod
from swarm.envelope import WireTask, canonical_bytes, envelope_from_group
from swarm.exchange import SwarmExchange
from swarm.identity import Identity
from swarm.reputation import Reputation
from swarm.sampler import ExternalPool
from swarm.transport.base import Received, TransportStats

HALF_LIFE = 600.0


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_rep(clock=None, **kw) -> Reputation:
    return Reputation(ReputationConfig(half_life_s=HALF_LIFE, **kw), clock=clock or Clock())


# ---------------------------------------------------------------------------------------------------------
# The model


def test_failures_lower_the_weight_then_ignore():
    rep = make_rep(halving_penalty=4.0, ignore_at=16.0)
    assert rep.weight("p") == 1.0 and not rep.ignored("p")
    weights = []
    for _ in range(15):
        rep.charge("p", "invalid")
        weights.append(rep.weight("p"))
    assert all(a > b for a, b in zip(weights, weights[1:]))
    assert weights[3] == 0.5 and weights[7] == 0.25  # halves every 4 points
    assert not rep.ignored("p")
    rep.charge("p", "invalid")
    assert rep.ignored("p") and rep.weight("p") == 0.0
    assert rep.weight("q") == 1.0 and not rep.ignored("q")
    assert rep.stats()["reputation_ignored"] == 1 and rep.stats()["reputation_charged_invalid"] == 16


def test_penalty_decays_so_a_peer_recovers():
    clock = Clock()
    rep = make_rep(clock)
    for _ in range(20):
        rep.charge("p", "invalid")
    assert rep.ignored("p")
    clock.t += HALF_LIFE
    assert abs(rep.penalty("p") - 10.0) < 1e-9 and not rep.ignored("p")
    assert abs(rep.weight("p") - 2 ** -2.5) < 1e-9
    clock.t += 20 * HALF_LIFE
    assert rep.weight("p") == 1.0  # forgotten entirely
    assert rep.stats()["reputation_tracked"] == 0


def test_event_weights_and_credit():
    rep = make_rep(no_signal_penalty=2.0, rate_limited_penalty=0.25, useful_credit=0.5)
    rep.charge("p", "no_signal")
    rep.charge("p", "rate_limited")
    assert rep.penalty("p") == 2.25
    rep.credit("p")
    assert rep.penalty("p") == 1.75
    for _ in range(10):
        rep.credit("p")
    assert rep.penalty("p") == 0.0 and rep.stats()["reputation_tracked"] == 0
    rep.credit("clean")  # a clean peer takes no state
    assert rep.stats()["reputation_tracked"] == 0 and rep.stats()["reputation_credited"] == 12


def test_tracking_is_bounded_and_sybils_do_not_flush_an_ignored_peer(monkeypatch):
    monkeypatch.setattr(repmod, "MAX_TRACKED_PEERS", 8)
    rep = make_rep()
    for _ in range(20):
        rep.charge("bad", "invalid")
    for i in range(500):
        rep.charge(f"sybil{i}", "invalid")
        assert len(rep._peers) <= 8
    assert rep.ignored("bad")
    assert rep.stats()["reputation_evicted"] == 500 + 1 - 8


# ---------------------------------------------------------------------------------------------------------
# Wired into admission


def rep_admission(clock: Clock, cfg: AdmissionConfig | None = None, **rep_kw):
    rep = make_rep(clock, **rep_kw)
    a = make_admission(cfg or AdmissionConfig(rate_per_peer=1e9, burst_per_peer=10**9))
    a.reputation = rep
    return a, rep


def underivable(ident: Identity, seq: int) -> bytes:
    return payload(ident, seq=seq, task=WireTask("reasoning_gym", "basic_arithmetic", "{}", 11, -1))


def test_failing_peer_is_ignored_cheaply_then_recovers(monkeypatch):
    clock = Clock()
    a, rep = rep_admission(clock)
    bad, good = Identity.generate(), Identity.generate()
    for seq in range(16):
        assert a.admit(underivable(bad, seq)) is None
    assert rep.ignored(bad.peer_id)
    assert a.stats()["rejected"] == {"task_underivable": 16}

    verified, resolved = [], []
    real_verify, real_resolve = adm.wire.verify, adm.resolve
    monkeypatch.setattr(adm.wire, "verify", lambda *x: verified.append(1) or real_verify(*x))
    monkeypatch.setattr(adm, "resolve", lambda ref: resolved.append(1) or real_resolve(ref))
    # Its valid envelopes are now dropped before the signature check, the re-derivation and the re-scoring.
    assert a.admit(payload(bad, seq=100)) is None
    assert a.stats()["rejected"]["ignored_peer"] == 1 and not verified and not resolved
    assert a.admit(payload(good, seq=1)) is not None and verified and resolved  # others are unaffected
    # ignored_peer is never charged: the penalty only decays.
    p = rep.penalty(bad.peer_id)
    for seq in range(101, 120):
        a.admit(payload(bad, seq=seq))
    assert rep.penalty(bad.peer_id) == p

    clock.t += HALF_LIFE  # 16 -> 8: below ignore_at again
    assert a.admit(payload(bad, seq=200)) is not None


def test_zero_score_groups_are_sampled_less_then_ignored():
    clock = Clock()
    a, rep = rep_admission(clock)
    lazy = Identity.generate()
    pool = ExternalPool(PoolConfig(per_peer_per_batch=100), reputation=rep)
    weights = []
    for seq in range(16):
        wrong = make_group(seq, texts=["<answer>nope</answer>"] * 4, rewards=[0.0] * 4)
        g = a.admit(payload(lazy, seq=seq, group=wrong))
        assert g is not None and g.rewards == [0.0] * 4  # admitted (valid), but no signal
        assert not pool.add(g)  # the pool drops it for carrying no gradient
        weights.append(rep.weight(lazy.peer_id))
    assert all(x > y for x, y in zip(weights, weights[1:])) and weights[-1] == 0.0
    assert rep.stats()["reputation_charged_no_signal"] == 16
    assert a.admit(payload(lazy, seq=99)) is None and a.stats()["rejected"] == {"ignored_peer": 1}


def test_useful_groups_pay_penalties_back():
    clock = Clock()
    a, rep = rep_admission(clock)
    peer = Identity.generate()
    for seq in range(4):
        a.admit(underivable(peer, seq))
    assert rep.penalty(peer.peer_id) == 4.0
    assert a.admit(payload(peer, seq=10)) is not None  # make_group's default has a reward spread
    assert rep.penalty(peer.peer_id) == 3.5


def _forged(honest: Identity, forger: Identity, seq: int) -> bytes:
    env = envelope_from_group(make_group(seq), SWARM, honest, seq, now=T0)
    body = canonical_bytes(env)
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, forger.sign(body))))


def test_forgeries_and_replays_cannot_spoil_an_honest_reputation():
    clock = Clock()
    adm_clock = FakeClock()
    rep = make_rep(clock)
    a = make_admission(AdmissionConfig(rate_per_peer=1e9, burst_per_peer=10**9), clock=adm_clock)
    a.reputation = rep
    honest, forger = Identity.generate(), Identity.generate()
    genuine_old = payload(honest, seq=1, now=T0 - 10_000)  # a real, old envelope anyone may have kept
    genuine_other_swarm = payload(honest, seq=2, swarm="elsewhere")
    genuine = payload(honest, seq=3)
    assert a.admit(genuine, honest.peer_id) is not None
    for i in range(100):
        for sender in (None, forger.peer_id):
            a.admit(_forged(honest, forger, 1000 + i), sender)  # bad_signature / sender_mismatch
            a.admit(payload(honest, seq=1000 + i, group=make_group(i))[:-3], sender)  # truncated: undecodable
        a.admit(genuine_old)  # stale
        a.admit(genuine_other_swarm)  # wrong_swarm, no transport sender to blame
        a.admit(genuine)  # duplicate
    assert rep.penalty(honest.peer_id) == 0.0
    assert rep.ignored(forger.peer_id)  # the transport authenticated the forger as the author of its junk
    assert a.admit(payload(honest, seq=4), honest.peer_id) is not None


def test_sender_mismatch_charges_the_relay_not_the_signer():
    clock = Clock()
    a, rep = rep_admission(clock)
    signer, relay = Identity.generate(), Identity.generate()
    assert a.admit(payload(signer, seq=1), relay.peer_id) is None
    assert rep.penalty(relay.peer_id) == 1.0 and rep.penalty(signer.peer_id) == 0.0


def test_limit_violation_charges_a_verified_signer_only():
    clock = Clock()
    a, rep = rep_admission(clock)
    signer, victim = Identity.generate(), Identity.generate()
    too_many = {"completions": ["x"] * 65, "finished": [True] * 65, "reward_claims": []}
    assert a.admit(payload(signer, seq=1, **too_many)) is None
    assert rep.penalty(signer.peer_id) == 1.0
    env = msgspec.structs.replace(envelope_from_group(make_group(), SWARM, victim, 2, now=T0), **too_many)
    body = canonical_bytes(env)
    forged = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, signer.sign(body))))
    assert a.admit(forged) is None and a.stats()["rejected"] == {"schema": 2}
    assert rep.penalty(victim.peer_id) == 0.0


def test_an_ignored_transport_sender_is_dropped_before_decompression(monkeypatch):
    clock = Clock()
    a, rep = rep_admission(clock)
    for _ in range(16):
        a.admit(b"garbage", "12D3KooWjunk")
    unwrapped = []
    real = adm.wire.unwrap
    monkeypatch.setattr(adm.wire, "unwrap", lambda *x: unwrapped.append(1) or real(*x))
    assert a.admit(payload(Identity.generate()), "12D3KooWjunk") is None
    assert a.stats()["rejected"]["ignored_peer"] == 1 and not unwrapped


# ---------------------------------------------------------------------------------------------------------
# Wired into the exchange


class FakeTransport:
    def __init__(self):
        self.inbox: list[Received] = []

    def incoming(self, max_items=None):
        items, self.inbox = self.inbox, []
        return items

    def peers(self):
        return []

    def stats(self):
        return TransportStats()

    def publish(self, payload):
        pass

    def stop(self):
        pass


def test_exchange_shares_one_reputation_and_reports_it():
    ident = Identity.generate()
    a = make_admission()
    pool = ExternalPool(PoolConfig())
    t = FakeTransport()
    ex = SwarmExchange(SwarmConfig(swarm_id=SWARM), ident, t, a, pool, seed=0)
    assert ex.reputation is not None and a.reputation is ex.reputation and pool.reputation is ex.reputation
    bad = Identity.generate()
    t.inbox = [Received(underivable(bad, seq), sender=bad.peer_id) for seq in range(3)]
    ex.drain()
    stats = ex.stats()
    assert stats["reputation_charged_invalid"] == 3 and stats["reputation_tracked"] == 1
    assert all(isinstance(v, int) for k, v in stats.items() if k.startswith("reputation_"))

    off = SwarmExchange(SwarmConfig(swarm_id=SWARM, reputation=ReputationConfig(enabled=False)), ident,
                        FakeTransport(), make_admission(), ExternalPool(PoolConfig()), seed=0)
    assert off.reputation is None and not any(k.startswith("reputation_") for k in off.stats())


def test_pool_skips_ignored_peers_and_weights_the_rest():
    rep = make_rep()
    task = make_group().task
    for _ in range(4):
        rep.charge("half", "invalid")  # weight 0.5
    for _ in range(16):
        rep.charge("gone", "invalid")
    counts = {"clean": 0, "half": 0, "gone": 0}
    for seed in range(3000):
        pool = ExternalPool(PoolConfig(per_peer_per_batch=10), reputation=rep)
        for peer in counts:
            pool.add(RolloutGroup(task=task, prompt="q", completions=[Completion("a"), Completion("b")],
                                  rewards=[1.0, 0.0], origin=peer))
        for g in pool.sample(1, random.Random(seed)):
            counts[g.origin] += 1
    assert counts["gone"] == 0
    assert 0.4 < counts["half"] / counts["clean"] < 0.6, counts
