import random

from node.config import PoolConfig
from node.rollout import Completion, RolloutGroup
from node.tasks import TaskRef, resolve
from swarm.sampler import ExternalPool

TASK = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))


def _group(peer, rewards=(1.0, 0.0)):
    return RolloutGroup(task=TASK, prompt="q", completions=[Completion(text="x") for _ in rewards],
                        rewards=list(rewards), origin=peer)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_zero_advantage_groups_are_dropped():
    pool = ExternalPool(PoolConfig())
    assert not pool.add(_group("a", (1.0, 1.0)))
    assert not pool.add(_group("a", (0.0, 0.0)))
    assert pool.add(_group("a", (1.0, 0.0)))
    assert len(pool) == 1 and pool.stats()["pool_no_signal"] == 2


def test_per_peer_cap_per_batch_and_no_reuse():
    pool = ExternalPool(PoolConfig(per_peer_per_batch=2))
    for peer in "aaaaab":
        pool.add(_group(peer))
    batch = pool.sample(4, random.Random(0))
    origins = [g.origin for g in batch]
    assert origins.count("a") == 2 and origins.count("b") == 1  # only 3 possible under the cap
    assert len(pool) == 3  # sampled groups leave the pool
    assert len(pool.sample(10, random.Random(0))) == 2  # the 3 left are all from a: cap 2


def test_sampling_is_uniform():
    counts = {}
    for seed in range(3000):
        pool = ExternalPool(PoolConfig(per_peer_per_batch=10))
        for i in range(6):
            pool.add(_group(f"p{i}"))
        for g in pool.sample(1, random.Random(seed)):
            counts[g.origin] = counts.get(g.origin, 0) + 1
    assert set(counts) == {f"p{i}" for i in range(6)}
    assert max(counts.values()) / min(counts.values()) < 1.3


def test_ttl_expires_old_groups():
    clock = Clock()
    pool = ExternalPool(PoolConfig(ttl_s=10.0), clock=clock)
    pool.add(_group("a"))
    clock.t = 5.0
    pool.add(_group("b"))
    clock.t = 12.0
    assert [g.origin for g in pool.sample(5, random.Random(0))] == ["b"]
    assert pool.stats()["pool_expired"] == 1


def test_pool_is_bounded_globally_and_per_peer():
    pool = ExternalPool(PoolConfig(max_groups=10, max_per_peer=3))
    for i in range(100):
        pool.add(_group("flooder"))
    assert len(pool) == 3
    for i in range(20):
        pool.add(_group(f"honest{i}"))
    assert len(pool) == 10
    assert pool.stats()["pool_evicted"] > 0


def test_reuse_keeps_groups():
    pool = ExternalPool(PoolConfig(reuse=True))
    pool.add(_group("a"))
    assert len(pool.sample(1, random.Random(0))) == 1 and len(pool) == 1


class _Weights:
    def __init__(self, weights):
        self.weights = weights

    def weight(self, peer):
        return self.weights.get(peer, 1.0)


def test_clean_reputation_keeps_the_uniform_order():
    def batch(reputation):
        pool = ExternalPool(PoolConfig(per_peer_per_batch=3), reputation=reputation)
        for i in range(20):
            pool.add(_group(f"p{i % 7}"))
        return [g.origin for g in pool.sample(8, random.Random(42))]

    assert batch(None) == batch(_Weights({}))


def test_reputation_weights_sampling_and_excludes_ignored_peers():
    counts = {"a": 0, "b": 0, "c": 0}
    for seed in range(3000):
        pool = ExternalPool(PoolConfig(per_peer_per_batch=10), reputation=_Weights({"b": 0.25, "c": 0.0}))
        for peer in counts:
            pool.add(_group(peer))
        for g in pool.sample(1, random.Random(seed)):
            counts[g.origin] += 1
    assert counts["c"] == 0
    assert 0.18 < counts["b"] / counts["a"] < 0.32, counts
    # Weighted order still fills the batch from the peers that are not ignored.
    pool = ExternalPool(PoolConfig(per_peer_per_batch=10), reputation=_Weights({"b": 0.25, "c": 0.0}))
    for peer in "abcabc":
        pool.add(_group(peer))
    assert sorted(g.origin for g in pool.sample(10, random.Random(0))) == ["a", "a", "b", "b"]


def test_per_peer_bound_evicts_that_peers_oldest_group():
    pool = ExternalPool(PoolConfig(max_per_peer=2, max_groups=100, reuse=True, per_peer_per_batch=100))
    first = _group("a")
    pool.add(first)
    for peer in "bcb":
        pool.add(_group(peer))
    pool.add(_group("a"))
    pool.add(_group("a"))  # a is at its bound: its oldest group (first) goes, nobody else's
    groups = pool.sample(100, random.Random(0))
    assert all(g is not first for g in groups)
    assert sorted(g.origin for g in groups) == ["a", "a", "b", "b", "c"]
    assert pool.stats()["pool_evicted"] == 1


def test_pool_memory_of_texts_is_bounded():
    big = 100_000
    pool = ExternalPool(PoolConfig(max_text_bytes=5 * big, per_peer_per_batch=100))

    def group(peer):
        return RolloutGroup(task=TASK, prompt="q", completions=[Completion("x" * big), Completion("y")],
                            rewards=[1.0, 0.0], origin=peer)

    for i in range(20):
        assert pool.add(group(f"p{i}"))
        assert pool.stats()["pool_text_bytes"] <= 5 * big
    assert len(pool) == 4  # each group takes a bit over 100 kB
    assert sorted(g.origin for g in pool.sample(10, random.Random(0))) == ["p16", "p17", "p18", "p19"]
    assert pool.stats()["pool_text_bytes"] == 0
