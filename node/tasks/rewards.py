"""Rewards as pure functions of (task, completion text).

Answer extraction: the answer is the text inside the **last complete** ``<answer>...</answer>`` pair of
the completion, stripped of surrounding whitespace. Tags are case-sensitive. A completion without a
complete pair has no answer and scores 0: the format is part of what the policy learns. Everything after
the end-of-sequence token has already been cut by the generator.
"""

from __future__ import annotations

import re

from node.tasks.base import Task, TaskSource

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)


def extract_answer(completion: str) -> str | None:
    """The stripped content of the last complete <answer>...</answer> pair, or None."""
    matches = _ANSWER_RE.findall(completion)
    if not matches:
        return None
    return matches[-1].strip()


def reward(source: TaskSource, task: Task, completion: str) -> float:
    """Reward in [0, 1]: the dataset's own scorer applied to the extracted answer (0 if none)."""
    return source.score(task, extract_answer(completion))
