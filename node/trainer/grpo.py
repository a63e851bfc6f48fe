"""GRPO as pure tensor functions: group-normalised advantages and the clipped, token-normalised loss.

Conventions (all tested against hand-computed references):
- advantages: ``A_ij = (r_ij - mean_j) / (std_j + eps)`` with the unbiased std of group j; with
  ``scale=False`` only the centring (Dr. GRPO). A group whose rewards are all equal gets A = 0.
- loss per token: ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)`` with
  ``rho = exp(logp - old_logp)``; plus ``beta * k3`` where ``k3 = exp(ref - logp) - (ref - logp) - 1``.
- token-level normalisation (DAPO): the batch loss is the sum over every completion token of every
  sequence divided by the total number of completion tokens in the batch, so long and short completions
  weigh per token, not per sequence. With gradient accumulation each micro-batch divides by the *batch*
  total, which makes the accumulated gradient equal the full-batch gradient.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """``rewards``: (groups, G) -> advantages of the same shape."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return centred / (std + eps)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of ``targets`` under ``softmax(logits / T)``; logits (B, L, V), targets (B, L)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed (not yet normalised) clipped policy-gradient loss over masked tokens.

    logp/old_logp/mask/ref_logp/token_weights: (B, L); advantages: (B,) per sequence.
    ``token_weights`` (e.g. truncated importance weights) multiply each token's loss.
    Returns ``(loss_sum, stats)`` where stats hold token counts of clipping on each side.
    """
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if beta and ref_logp is not None:
        d = ref_logp - logp
        per_token = per_token + beta * (torch.exp(d) - d - 1.0)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss_sum = (per_token * mask).sum()
    with torch.no_grad():
        # A token is "clipped" when the clipped branch is the one taken and its gradient is zero.
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype) * mask
        stats = {"clip_low": low.sum(), "clip_high": high.sum(), "tokens": mask.sum()}
    return loss_sum, stats


def off_policy_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    has_behaviour: torch.Tensor,
    mode: str,
    cap: float = 2.0,
    band: tuple[float, float] = (0.5, 2.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights that correct for sampling from pi_behaviour while pi_old is the trainer's policy.

    All tensors (B, L); ``has_behaviour`` is 1 where a behaviour logprob was recorded (local completion
    tokens) and 0 elsewhere (external groups, padding), where the weight is 1. With
    ``rho = pi_old / pi_behaviour = exp(old_logp - behaviour_logp)``:

    - ``tis``: ``w = min(rho, cap)`` (truncated importance sampling; the truncation bounds the variance);
    - ``mask``: ``w = 1`` if ``band[0] <= rho <= band[1]`` else ``0`` (the token is dropped);
    - ``none``: ``w = 1``.

    Stats (sums over tokens with a behaviour logprob, so callers can aggregate micro-batches): ``n``,
    ``w_sum``, ``w_sq_sum`` (for the effective sample size ``w_sum**2 / (n * w_sq_sum)``), ``truncated``
    (rho > cap, tis), ``masked`` (outside the band, mask), ``log_rho_abs_sum``.
    """
    has = has_behaviour.to(old_logp.dtype)
    log_rho = (old_logp.detach() - behaviour_logp) * has
    rho = torch.exp(log_rho)
    ones = torch.ones_like(rho)
    if mode == "tis":
        w = torch.where(has > 0, torch.clamp(rho, max=cap), ones)
    elif mode == "mask":
        keep = (rho >= band[0]) & (rho <= band[1])
        w = torch.where(has > 0, keep.to(rho.dtype), ones)
    elif mode == "none":
        w = ones
    else:
        raise ValueError(f"train.off_policy: unknown mode {mode!r}; use tis, mask or none")
    with torch.no_grad():
        wh = w * has
        stats = {
            "n": has.sum(),
            "w_sum": wh.sum(),
            "w_sq_sum": (wh * wh).sum(),
            "truncated": ((rho > cap) & (has > 0)).sum().to(rho.dtype) if mode == "tis" else has.new_zeros(()),
            "masked": ((w == 0) & (has > 0)).sum().to(rho.dtype) if mode == "mask" else has.new_zeros(()),
            "log_rho_abs_sum": log_rho.abs().sum(),
        }
    return w.detach(), stats
