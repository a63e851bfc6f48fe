"""SAPO external sampling: the pool of admitted peer groups and how J of them enter a training batch.

Groups arrive here after admission, i.e. re-derived and re-scored by this node's own verifier. Following
the SAPO paper, groups whose (local) rewards are all equal carry no GRPO gradient and are dropped on entry;
the rest are sampled uniformly, subject to a per-peer cap per batch so that one prolific peer cannot fill
a batch. The pool is bounded four ways: a time-to-live since admission, a global size, a per-peer size and
the memory of its texts (``max_text_bytes``; oldest evicted first), so a flood of valid groups, even of
maximal ones, costs bounded memory.

With a ``Reputation`` (``swarm/reputation.py``; ``SwarmExchange`` sets ``pool.reputation``) sampling is
weighted: a group's chance is proportional to its peer's weight (weighted sampling without replacement,
Efraimidis-Spirakis keys ``u ** (1 / w)``), and groups of ignored peers (weight 0) are never sampled. When
every weight is 1 the order is the uniform shuffle, exactly as without a reputation.
"""

from __future__ import annotations

import random
import sys
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

from node.rollout import RolloutGroup


@dataclass
class _Entry:
    group: RolloutGroup
    added: float
    size: int
    """Memory of the group's texts (``sys.getsizeof`` of prompt and completions)."""


def _text_bytes(group: RolloutGroup) -> int:
    return sys.getsizeof(group.prompt) + sum(sys.getsizeof(c.text) for c in group.completions)


class ExternalPool:
    def __init__(self, cfg, clock=time.monotonic, reputation=None):
        self.cfg = cfg
        self.clock = clock
        self.reputation = reputation
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # insertion order = age
        self._by_peer: dict[str, OrderedDict[int, None]] = {}
        """peer -> its keys, oldest first (so evicting a peer's oldest group does not scan the pool)."""
        self._next = 0
        self._bytes = 0
        self.counts = {"pool_added": 0, "pool_no_signal": 0, "pool_expired": 0, "pool_evicted": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        peer = entry.group.origin
        keys = self._by_peer[peer]
        del keys[key]
        if not keys:
            del self._by_peer[peer]

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
        if len(self._by_peer.get(peer, ())) >= self.cfg.max_per_peer:
            self._remove(next(iter(self._by_peer[peer])))
            self.counts["pool_evicted"] += 1
        size = _text_bytes(group)
        while self._entries and (len(self._entries) >= self.cfg.max_groups
                                 or self._bytes + size > self.cfg.max_text_bytes):
            self._remove(next(iter(self._entries)))
            self.counts["pool_evicted"] += 1
        key, self._next = self._next, self._next + 1
        self._entries[key] = _Entry(group, self.clock(), size)
        self._bytes += size
        self._by_peer.setdefault(peer, OrderedDict())[key] = None
        self.counts["pool_added"] += 1
        return True

    def sample(self, n: int, rng: random.Random) -> list[RolloutGroup]:
        """Up to ``n`` groups, uniformly (or by reputation weight) among the live pool, at most
        ``per_peer_per_batch`` per peer."""
        self._expire()
        if n <= 0 or not self._entries:
            return []
        keys = self._order(rng)
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

    def _order(self, rng: random.Random) -> list[int]:
        keys = list(self._entries)
        weights = {}
        if self.reputation is not None:
            weights = {peer: self.reputation.weight(peer) for peer in self._by_peer}
        if all(w == 1.0 for w in weights.values()):
            rng.shuffle(keys)
            return keys
        scored = []
        for key in keys:
            w = weights[self._entries[key].group.origin]
            if w > 0.0:
                scored.append((rng.random() ** (1.0 / w), key))
        scored.sort(reverse=True)
        return [key for _, key in scored]

    def stats(self) -> dict:
        return {"pool_size": len(self._entries), "pool_peers": len(self._by_peer), "pool_text_bytes": self._bytes,
                **self.counts}
