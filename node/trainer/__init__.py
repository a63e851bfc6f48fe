"""GRPO/SAPO trainer: pure loss functions (``grpo``) and the optimizer-step driver (``trainer``)."""

from node.trainer.trainer import Sequence, Trainer

__all__ = ["Sequence", "Trainer"]
