"""Tasks: re-derivable questions (``TaskRef`` -> ``Task``), their sources, the node's task mix, rewards."""

from __future__ import annotations

import hashlib
import random

from node.tasks.base import Task, TaskError, TaskRef, TaskSource, canonical_config
from node.tasks.rewards import extract_answer, reward

__all__ = ["Task", "TaskError", "TaskRef", "TaskSource", "TaskMix", "canonical_config", "extract_answer",
           "get_source", "resolve", "reward", "score"]

_SOURCES: dict[str, TaskSource] = {}


def get_source(name: str) -> TaskSource:
    if name not in _SOURCES:
        if name == "reasoning_gym":
            from node.tasks.reasoning_gym import ReasoningGymSource

            _SOURCES[name] = ReasoningGymSource()
        else:
            raise TaskError(f"unknown task source {name!r}; known: reasoning_gym")
    return _SOURCES[name]


def resolve(ref: TaskRef) -> Task:
    """Regenerate a task from its reference (raises TaskError when it cannot be derived)."""
    return get_source(ref.source).get(ref)


def score(task: Task, completion: str) -> float:
    return reward(get_source(task.ref.source), task, completion)


class TaskMix:
    """The node's question stream: which task reference is question ``k`` of round ``r``.

    Stateless by design: the dataset choice is drawn from ``Random((seed, round, k))`` and the index is
    ``round * per_round + k``, so a resumed node asks exactly the questions it would have asked.

    The dataset seed is a 48-bit hash of the node's task seed, not the seed itself: reasoning-gym derives
    item i from ``seed + i``, so nodes seeded 0, 1, 2 would otherwise ask the same questions shifted by
    one index.
    """

    def __init__(self, specs: list, seed: int):
        self.specs = list(specs)
        self.node_seed = int(seed)
        self.seed = int.from_bytes(hashlib.sha256(f"sapo-tasks/{seed}".encode()).digest()[:6], "little")
        self.weights = [float(s.weight) for s in self.specs]

    def refs_for_round(self, round_idx: int, n: int) -> list[TaskRef]:
        refs = []
        for k in range(n):
            rng = random.Random(f"{self.node_seed}/{round_idx}/{k}")
            spec = rng.choices(self.specs, weights=self.weights, k=1)[0]
            refs.append(TaskRef.make(spec.source, spec.dataset, spec.config, self.seed, round_idx * n + k))
        return refs

    def allowed(self) -> set[tuple[str, str]]:
        return {(s.source, s.dataset) for s in self.specs}

    def own_configs(self) -> set[tuple[str, str, str]]:
        return {(s.source, s.dataset, canonical_config(s.config)) for s in self.specs}
