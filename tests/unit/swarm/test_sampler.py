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
