"""Task references: the re-derivable identity of one question.

A task is named by ``TaskRef(source, dataset, config, seed, index)``. Anyone holding the reference
regenerates the same question and answer bit for bit (sources are seeded generators, no files), which is
what lets a node re-score a peer's completions with its own verifier instead of trusting the peer.

``config`` is canonicalised (sorted keys, tuples as lists) so that two nodes that spell the same dataset
config differently still agree on the reference and its ``key``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


def canonical_config(config: dict[str, Any]) -> str:
    """JSON text of a dataset config with sorted keys and no whitespace (the canonical form)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class TaskRef:
    source: str
    dataset: str
    config: str
    """Canonical JSON of the dataset generator's keyword arguments (see ``canonical_config``)."""
    seed: int
    index: int

    @classmethod
    def make(cls, source: str, dataset: str, config: dict[str, Any], seed: int, index: int) -> "TaskRef":
        return cls(source, dataset, canonical_config(config), int(seed), int(index))

    @property
    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def key(self) -> str:
        """Stable string id, e.g. for dedup and logs."""
        return f"{self.source}/{self.dataset}/{self.config}/{self.seed}/{self.index}"


@dataclass(frozen=True)
class Task:
    ref: TaskRef
    question: str
    answer: str | None
    """Reference answer where the dataset has one (some verify without one, e.g. propositional_logic)."""
    entry: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    """The source's full record, which its scorer needs."""


class TaskSource(Protocol):
    name: str

    def datasets(self) -> list[str]: ...

    def get(self, ref: TaskRef) -> Task:
        """Regenerate the task; raises ``TaskError`` if the reference cannot be derived."""
        ...

    def score(self, task: Task, answer: str | None) -> float:
        """Score an extracted answer in [0, 1] with the dataset's own verifier."""
        ...


class TaskError(ValueError):
    """A task reference that cannot be regenerated (unknown dataset, bad config, bad index)."""
