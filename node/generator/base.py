"""The generator interface: sample G completions per prompt, with behaviour logprobs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from node.rollout import Completion


class Generator(ABC):
    model = None
    """The module this generator samples from (None for engines that hold their own copy, e.g. vLLM)."""

    @abstractmethod
    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[Completion]]:
        """Sample ``n`` completions for every prompt; returns one list of ``n`` per prompt, in order.

        ``seed`` fixes the sampling noise, so a resumed round samples what it would have sampled.
        """

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Make the generator sample from ``model``'s current weights.

        A no-op when the generator samples from ``model`` itself (``runtime.mode: sync``). Otherwise the
        trainable parameters are copied in place into the generator's own module (same architecture, e.g.
        a copy made at start): no reload, no new allocation.
        """
        if self.model is None or self.model is model:
            return
        mine = dict(self.model.named_parameters())
        for name, src in model.named_parameters():
            if src.requires_grad:
                mine[name].copy_(src, non_blocking=True)

    @property
    def tokens_generated(self) -> int:
        return 0
