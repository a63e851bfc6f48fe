"""SAPO external sampling: the pool of admitted peer groups and how J of them enter a training batch.

Groups arrive here after admission, i.e. re-derived and re-scored by this node's own verifier. Following
the SAPO paper, groups whose (local) rewards are all equal carry no GRPO gradient and are dropped on entry;
the rest are sampled uniformly, subject to a per-peer cap per batch so that one prolific peer cannot fill
a batch. The pool is bounded three ways: a time-to-live since admission, a global size and a per-peer size
(oldest evicted first), so a flood of valid groups costs bounded memory.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

from node.rollout import RolloutGroup


@dataclass
class _Entry:
    group: RolloutGroup
    added: float


class ExternalPool:
    def __init__(self, cfg, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # insertion order = age
        self._per_peer: dict[str, int] = defaultdict(int)
        self._next = 0
        self.counts = {"pool_added": 0, "pool_no_signal": 0, "pool_expired": 0, "pool_evicted": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        peer = entry.group.origin
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    def _expire(self) -> None:
        cutoff = self.clock() - self.cfg.ttl_s
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.added >= cutoff:
                break
            self._remove(key)
            self.counts["pool_expired"] += 1

    def add(self, group: RolloutGroup) -> bool:
        """Add an admitted group; False if it was dropped for carrying no learning signal."""
        if not group.has_signal:
            self.counts["pool_no_signal"] += 1
            return False
        peer = group.origin
        if self._per_peer.get(peer, 0) >= self.cfg.max_per_peer:
            oldest = next(k for k, e in self._entries.items() if e.group.origin == peer)
            self._remove(oldest)
            self.counts["pool_evicted"] += 1
        if len(self._entries) >= self.cfg.max_groups:
            self._remove(next(iter(self._entries)))
            self.counts["pool_evicted"] += 1
        self._entries[self._next] = _Entry(group, self.clock())
        self._next += 1
        self._per_peer[peer] += 1
        self.counts["pool_added"] += 1
        return True

    def sample(self, n: int, rng: random.Random) -> list[RolloutGroup]:
        """Up to ``n`` groups, uniformly among the live pool, at most ``per_peer_per_batch`` per peer."""
        self._expire()
        if n <= 0 or not self._entries:
            return []
        keys = list(self._entries)
        rng.shuffle(keys)
        taken: list[int] = []
        per_peer: dict[str, int] = defaultdict(int)
        for key in keys:
            peer = self._entries[key].group.origin
            if per_peer[peer] >= self.cfg.per_peer_per_batch:
                continue
            per_peer[peer] += 1
            taken.append(key)
            if len(taken) == n:
                break
        out = [self._entries[k].group for k in taken]
        if not self.cfg.reuse:
            for k in taken:
                self._remove(k)
        return out

    def stats(self) -> dict:
        return {"pool_size": len(self._entries), "pool_peers": len(self._per_peer), **self.counts}
