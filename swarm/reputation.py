"""Peer reputation: peers that keep failing admission, or whose groups carry no learning signal once this node
has re-scored them, are sampled less and then ignored; the penalty decays, so a peer can recover.

    rep = Reputation(ReputationConfig(), clock=time.monotonic)
    rep.charge(peer, "invalid")    # a failure attributable to ``peer`` (see "Attribution")
    rep.charge(peer, "no_signal")  # admitted, but every completion scored the same after local re-scoring
    rep.credit(peer)               # admitted with a reward spread: pays some penalty back
    rep.weight(peer)               # relative sampling weight in [0, 1] (1 = clean, 0 = ignored)
    rep.ignored(peer)              # admission drops the envelope before the signature check and re-scoring

Model. Each peer has a penalty ``P >= 0`` that decays exponentially (``P(t) = P(t0) * 2 ** -((t - t0) /
half_life_s)``). A charge adds the event's weight (``invalid_penalty``, ``no_signal_penalty``,
``rate_limited_penalty``); a credit subtracts ``useful_credit`` (never below 0). The sampling weight is
``2 ** -(P / halving_penalty)`` while ``P < ignore_at``, and 0 from ``ignore_at`` on: the peer is ignored.
In steady state a peer that only sends rejected envelopes gets about ``ignore_at * ln 2 / half_life_s /
invalid_penalty`` of them per second past the ignore check (the decay it takes to drop under ``ignore_at``
again), about one a minute with the defaults, whatever rate it sends at.

Attribution. Charging the wrong peer is the attack to avoid: a forger must not get an honest peer ignored.
The caller (``Admission``) charges only

- the *signer*, once its Ed25519 signature over the body has verified, and only for failures that a third
  party cannot produce by re-sending one of the signer's genuine envelopes in another place or at another
  time (so never for ``stale``, ``future``, ``duplicate``, ``wrong_swarm``: an old or other-swarm envelope of
  an honest peer may be replayed by anyone), nor for mismatches of honest heterogeneity (``bad_version``,
  ``dataset_not_allowed``, ``config_not_allowed``);
- the *transport sender* (``Received.sender``), which both transports authenticate (gossipsub strict
  signing names the author, never the relaying neighbour; the hivemind index record is signed by its owner and
  the body checked against its signed digest), for what that sender itself authored: garbage bytes, bad
  signatures, another peer's envelope re-published as its own (``sender_mismatch``).

Bounded: at most ``MAX_TRACKED_PEERS`` peers are tracked (peers with no penalty take no state). When full,
the entry with the lowest penalty among the ``EVICTION_SAMPLE`` least recently charged is evicted, so a flood
of fresh Sybil identities charged once each does not flush a heavily penalised peer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable

MAX_TRACKED_PEERS = 4096
EVICTION_SAMPLE = 8
_FORGET_BELOW = 1e-3
"""A penalty that has decayed below this is forgotten (the entry is dropped)."""

KINDS = ("invalid", "no_signal", "rate_limited")


class Reputation:
    def __init__(self, cfg, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._lock = threading.Lock()
        self._peers: OrderedDict[str, list[float]] = OrderedDict()
        """peer -> [penalty at time t, t]; order = least recently charged first."""
        self._charged: Counter[str] = Counter()
        self._credited = 0
        self._evicted = 0

    # Queries ------------------------------------------------------------------------------------------

    def penalty(self, peer: str) -> float:
        with self._lock:
            return self._current(peer, float(self.clock()))

    def ignored(self, peer: str | None) -> bool:
        if peer is None:
            return False
        return self.penalty(peer) >= self.cfg.ignore_at

    def weight(self, peer: str) -> float:
        """Relative sampling weight: 1 for a clean peer, halving every ``halving_penalty``, 0 once ignored."""
        p = self.penalty(peer)
        if p >= self.cfg.ignore_at:
            return 0.0
        return 2.0 ** (-p / self.cfg.halving_penalty)

    # Events -------------------------------------------------------------------------------------------

    def charge(self, peer: str | None, kind: str) -> None:
        if peer is None:
            return
        amount = {"invalid": self.cfg.invalid_penalty, "no_signal": self.cfg.no_signal_penalty,
                  "rate_limited": self.cfg.rate_limited_penalty}[kind]
        with self._lock:
            self._charged[kind] += 1
            if amount <= 0:
                return
            now = float(self.clock())
            p = self._current(peer, now) + amount
            entry = self._peers.get(peer)
            if entry is None:
                self._peers[peer] = [p, now]
                self._evict()
            else:
                entry[0], entry[1] = p, now
                self._peers.move_to_end(peer)

    def credit(self, peer: str | None) -> None:
        if peer is None:
            return
        with self._lock:
            self._credited += 1
            entry = self._peers.get(peer)
            if entry is None:
                return  # a clean peer takes no state
            now = float(self.clock())
            p = self._current(peer, now) - self.cfg.useful_credit
            if p < _FORGET_BELOW:
                del self._peers[peer]
            else:
                entry[0], entry[1] = p, now

    def stats(self) -> dict:
        """Numeric counters for metrics.jsonl (peers currently penalised / ignored, events so far)."""
        with self._lock:
            now = float(self.clock())
            current = [self._decayed(e, now) for e in self._peers.values()]
            out = {
                "reputation_tracked": len(current),
                "reputation_penalized": sum(1 for p in current if p >= _FORGET_BELOW),
                "reputation_ignored": sum(1 for p in current if p >= self.cfg.ignore_at),
                "reputation_credited": self._credited,
                "reputation_evicted": self._evicted,
            }
            for kind in KINDS:
                out[f"reputation_charged_{kind}"] = self._charged[kind]
            return out

    # Internals (lock held) ----------------------------------------------------------------------------

    def _decayed(self, entry: list[float], now: float) -> float:
        p, t = entry
        dt = now - t
        if dt <= 0:
            return p
        return p * math.exp2(-dt / self.cfg.half_life_s)

    def _current(self, peer: str, now: float) -> float:
        entry = self._peers.get(peer)
        if entry is None:
            return 0.0
        p = self._decayed(entry, now)
        if p < _FORGET_BELOW:
            del self._peers[peer]
            return 0.0
        return p

    def _evict(self) -> None:
        while len(self._peers) > MAX_TRACKED_PEERS:
            now = float(self.clock())
            oldest = []
            for peer, entry in self._peers.items():
                oldest.append((self._decayed(entry, now), peer))
                if len(oldest) == EVICTION_SAMPLE:
                    break
            del self._peers[min(oldest)[1]]
            self._evicted += 1
