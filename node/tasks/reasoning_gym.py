"""reasoning-gym as a task source: seeded procedural generators with their own scorers, fully offline.

An item is ``create_dataset(name, seed=seed, size=index + 1, **config)[index]``; reasoning-gym derives
item ``i`` from ``(seed, i)`` alone (checked for the nine SAPO datasets in tests), so the dataset
object can be built once per (name, config, seed) with a large size and indexed.
"""

from __future__ import annotations

import contextlib
import io
import threading
from functools import lru_cache
from typing import Any

from node.tasks.base import Task, TaskError, TaskRef

# The nine ReasoningGYM datasets of the SAPO paper (arXiv 2509.08721).
SAPO_DATASETS = (
    "arc_1d",
    "basic_arithmetic",
    "base_conversion",
    "bf",
    "binary_matrix",
    "calendar_arithmetic",
    "decimal_arithmetic",
    "fraction_simplification",
    "propositional_logic",
)

# Items are indexed lazily; the size only bounds the index.
_MAX_INDEX = 2**31 - 2
# redirect_stdout swaps the process-wide sys.stdout: two threads interleaving it (the async pipeline's
# generator thread and admission on the main thread) could leave stdout pointing at a StringIO for good.
_quiet_lock = threading.RLock()


@contextlib.contextmanager
def _quiet():
    with _quiet_lock, contextlib.redirect_stdout(io.StringIO()):
        yield


@lru_cache(maxsize=256)
def _dataset(name: str, config_json: str, seed: int):
    import json

    import reasoning_gym

    kwargs: dict[str, Any] = json.loads(config_json)
    # Some generators print while they build (bf prints progress dots); keep stdout clean.
    with _quiet():
        return reasoning_gym.create_dataset(name, seed=seed, size=_MAX_INDEX + 1, **kwargs)


class ReasoningGymSource:
    name = "reasoning_gym"

    def datasets(self) -> list[str]:
        from reasoning_gym.factory import DATASETS

        return sorted(DATASETS)

    def get(self, ref: TaskRef) -> Task:
        if ref.source != self.name:
            raise TaskError(f"task source {ref.source!r} is not {self.name!r}")
        if not 0 <= ref.index <= _MAX_INDEX:
            raise TaskError(f"task index {ref.index} out of range [0, {_MAX_INDEX}]")
        try:
            ds = _dataset(ref.dataset, ref.config, ref.seed)
        except Exception as exc:  # unknown name, bad kwargs: the generator's own error, as a TaskError
            raise TaskError(f"cannot build reasoning_gym dataset {ref.dataset!r} with {ref.config}: {exc}") from exc
        try:
            with _quiet():
                entry = ds[ref.index]
        except Exception as exc:
            raise TaskError(f"cannot generate {ref.key}: {exc}") from exc
        answer = entry.get("answer")
        return Task(ref=ref, question=str(entry["question"]), answer=None if answer is None else str(answer),
                    entry=entry)

    def score(self, task: Task, answer: str | None) -> float:
        if answer is None:
            return 0.0
        ds = _dataset(task.ref.dataset, task.ref.config, task.ref.seed)
        try:
            value = float(ds.score_answer(answer=answer, entry=task.entry))
        except Exception:
            # A scorer that chokes on a malformed answer has been given a wrong answer.
            return 0.0
        return min(1.0, max(0.0, value))
