"""The hook where the swarm meets the node's training loop.

Every round the runtime hands its freshly generated, locally rewarded groups to ``publish`` and asks
``sample`` for up to J external groups (admitted, re-derived and re-scored by this node's own verifier).
``SoloExchange`` is the node alone: it publishes nowhere and returns nothing, so the batch is topped up
with local groups. The swarm layer provides the networked implementation.
"""

from __future__ import annotations

from typing import Protocol

from node.rollout import RolloutGroup


class Exchange(Protocol):
    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None: ...

    def sample(self, n: int, round_idx: int) -> list[RolloutGroup]: ...

    def stats(self) -> dict:
        """Counters for metrics.jsonl (e.g. admitted, rejected by reason, peers, bytes in/out)."""
        ...

    def close(self) -> None: ...


class SoloExchange:
    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None:
        return None

    def sample(self, n: int, round_idx: int) -> list[RolloutGroup]:
        return []

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        return None
