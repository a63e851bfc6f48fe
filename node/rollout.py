"""Rollout groups: the unit that is generated, rewarded, shared with peers and trained on.

One group = one task (re-derivable from its ``TaskRef``) + G completions + their rewards. Local groups
carry the token ids and behaviour logprobs the generator produced; external groups (from peers) carry only
text, and the trainer re-tokenises them and recomputes old logprobs under the receiver's own policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.tasks import Task


@dataclass
class Completion:
    text: str
    """Decoded completion, cut at the end-of-sequence token (which is not part of the text)."""
    token_ids: list[int] | None = None
    """Sampled ids including the final EOS when the completion finished; None for external text."""
    logprobs: list[float] | None = None
    """Behaviour logprob of every sampled token under the sampling distribution (temperature etc.)."""
    finished: bool = True
    """Ended with EOS (False: cut at max_new_tokens)."""


@dataclass
class RolloutGroup:
    task: Task
    prompt: str
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)
    origin: str = "local"
    """``local`` or the sender's peer id."""
    policy_version: int = 0
    """Trainer step whose weights generated it (for staleness accounting)."""
    model_id: str = ""

    @property
    def is_local(self) -> bool:
        return self.origin == "local"

    @property
    def reward_spread(self) -> float:
        return (max(self.rewards) - min(self.rewards)) if self.rewards else 0.0

    @property
    def has_signal(self) -> bool:
        """False when all rewards are equal: the group's GRPO advantages are all zero."""
        return self.reward_spread > 1e-9
