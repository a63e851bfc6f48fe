"""The generator interface: sample G completions per prompt, with behaviour logprobs."""

from __future__ import annotations

from abc import ABC, abstractmethod

from node.rollout import Completion


class Generator(ABC):
    @abstractmethod
    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[Completion]]:
        """Sample ``n`` completions for every prompt; returns one list of ``n`` per prompt, in order.

        ``seed`` fixes the sampling noise, so a resumed round samples what it would have sampled.
        """

    def sync_weights(self, model) -> None:
        """Make the generator sample from ``model``'s current weights (no-op when it shares the module)."""

    @property
    def tokens_generated(self) -> int:
        return 0
