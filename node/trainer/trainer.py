"""The policy trainer: turns rollout groups (local and external alike) into one GRPO optimizer step.

External groups arrive as text only: they are re-tokenised here with the receiver's tokenizer, and their
"old" logprobs are computed under the receiver's current policy (the SAPO treatment), exactly like local
groups when ``epochs_per_round`` is 1. Behaviour logprobs recorded by the generator stay attached to local
sequences for off-policy correction.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch

from node.model import autocast
from node.rollout import RolloutGroup
from node.trainer.grpo import group_advantages, grpo_token_loss, off_policy_weights, token_logprobs


@dataclass
class Sequence:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    behaviour_logprobs: list[float] | None = None


class Trainer:
    def __init__(self, model, tokenizer, cfg, temperature: float, max_prompt_tokens: int,
                 max_new_tokens: int, external_positive_only: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.temperature = temperature
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.external_positive_only = external_positive_only
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.ref_model = None
        self.lora = hasattr(model, "disable_adapter")
        if cfg.kl_beta > 0 and not self.lora:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0
        """Policy version: rounds trained so far (one step per round, also when a batch is empty)."""
        self.update_lock = contextlib.nullcontext()
        """Held while weights change (the async pipeline's generator copies weights under it)."""

    # ------------------------------------------------------------------ batch construction
    def sequences(self, groups: list[RolloutGroup]) -> list[Sequence]:
        """Flatten groups into sequences with group-normalised advantages."""
        out: list[Sequence] = []
        for g in groups:
            adv = group_advantages(torch.tensor([g.rewards], dtype=torch.float64),
                                   scale=self.cfg.scale_rewards)[0].tolist()
            if self.external_positive_only and not g.is_local:
                adv = [max(0.0, a) for a in adv]
            # Same tokenisation and left truncation as the generator's, so local token ids line up.
            prompt_ids = self.tokenizer(g.prompt, add_special_tokens=False)["input_ids"][-self.max_prompt_tokens:]
            for c, a in zip(g.completions, adv):
                if c.token_ids is not None and g.is_local:
                    ids, blp = list(c.token_ids), c.logprobs
                else:  # external text: re-tokenise under our tokenizer, end with our EOS
                    ids = self.tokenizer(c.text, add_special_tokens=False)["input_ids"]
                    ids = ids[: self.max_new_tokens - 1] + [self.eos_id] if c.finished else ids[: self.max_new_tokens]
                    blp = None
                if not ids:
                    continue
                out.append(Sequence(prompt_ids, ids, float(a), blp))
        return out

    def _collate(self, seqs: list[Sequence]):
        width = max(len(s.prompt_ids) + len(s.completion_ids) for s in seqs)
        b = len(seqs)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        att = torch.zeros((b, width), dtype=torch.long)
        cmask = torch.zeros((b, width), dtype=torch.float32)
        blp = torch.zeros((b, width), dtype=torch.float32)
        has_blp = torch.zeros((b, width), dtype=torch.float32)
        for i, s in enumerate(seqs):
            p, c = len(s.prompt_ids), len(s.completion_ids)
            ids[i, : p + c] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
            att[i, : p + c] = 1
            cmask[i, p: p + c] = 1.0
            if s.behaviour_logprobs is not None and len(s.behaviour_logprobs) == c:
                blp[i, p: p + c] = torch.tensor(s.behaviour_logprobs, dtype=torch.float32)
                has_blp[i, p: p + c] = 1.0
        adv = torch.tensor([s.advantage for s in seqs], dtype=torch.float32)
        # Shift: position t predicts token t+1, so the completion-aligned tensors move one to the left.
        dev = self.device
        return (ids.to(dev), att.to(dev), cmask[:, 1:].to(dev), adv.to(dev),
                blp[:, 1:].to(dev), has_blp[:, 1:].to(dev))

    def _logp(self, model, ids, att) -> torch.Tensor:
        with autocast(self.device, self.cfg.precision):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        return token_logprobs(logits, ids[:, 1:], self.temperature)

    @torch.no_grad()
    def sequence_logprobs(self, seqs: list[Sequence]) -> list[list[float]]:
        """Per-token logprobs of each sequence's completion under the current policy (for tests/diagnostics)."""
        ids, att, cmask = self._collate(seqs)[:3]
        logp = self._logp(self.model, ids, att)
        return [logp[i][cmask[i] > 0].tolist() for i in range(len(seqs))]

    # ------------------------------------------------------------------ one step
    def step(self, groups: list[RolloutGroup]) -> dict[str, float]:
        t0 = time.perf_counter()
        seqs = self.sequences(groups)
        if not seqs:
            with self.update_lock:
                self.steps += 1
            return {"loss": 0.0, "train_tokens": 0, "train_s": 0.0}
        mb = self.cfg.micro_batch_size
        batches = [self._collate(seqs[i:i + mb]) for i in range(0, len(seqs), mb)]
        total_tokens = float(sum(b[2].sum().item() for b in batches))
        total_positions = sum(int(b[1].sum()) for b in batches)  # non-pad tokens
        old_logps: list[torch.Tensor | None] = [None] * len(batches)
        weights: list[torch.Tensor | None] = [None] * len(batches)
        offp = {"n": 0.0, "w_sum": 0.0, "w_sq_sum": 0.0, "truncated": 0.0, "masked": 0.0, "log_rho_abs_sum": 0.0}
        self.model.train()
        loss_total = clip_low = clip_high = 0.0
        grad_norm = 0.0
        # Weights change from the first optimizer step until the version is bumped: the lock covers that
        # span (with epochs_per_round > 1 it includes the later epochs' passes), so whoever copies weights
        # under it always gets a (weights, version) pair that belongs together.
        with contextlib.ExitStack() as locked:
            for epoch in range(self.cfg.epochs_per_round):
                self.optimizer.zero_grad(set_to_none=True)
                loss_epoch = 0.0
                for k, (ids, att, cmask, adv, blp, has_blp) in enumerate(batches):
                    logp = self._logp(self.model, ids, att)
                    if old_logps[k] is None:
                        # pi_old = the policy before this round's first update: within the first epoch no
                        # update has happened yet, so it is this forward pass, detached (ratio == 1).
                        old_logps[k] = logp.detach()
                        # Off-policy correction against the sampler's recorded logprobs (pi_behaviour).
                        weights[k], st_w = off_policy_weights(
                            old_logps[k], blp, has_blp * cmask, self.cfg.off_policy, self.cfg.tis_cap,
                            tuple(self.cfg.mask_band))
                        for key, v in st_w.items():
                            offp[key] += float(v)
                    ref = None
                    if self.cfg.kl_beta > 0:
                        with torch.no_grad():
                            if self.lora:
                                with self.model.disable_adapter():
                                    ref = self._logp(self.model, ids, att)
                            else:
                                ref = self._logp(self.ref_model, ids, att)
                    loss_sum, st = grpo_token_loss(logp, old_logps[k], adv, cmask, self.cfg.eps_low,
                                                   self.cfg.eps_high, ref_logp=ref, beta=self.cfg.kl_beta,
                                                   token_weights=weights[k])
                    loss = loss_sum / total_tokens
                    loss.backward()
                    loss_epoch += loss.item()
                    clip_low += st["clip_low"].item()
                    clip_high += st["clip_high"].item()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
                if epoch == 0:
                    locked.enter_context(self.update_lock)
                self.optimizer.step()
                loss_total += loss_epoch
            self.steps += 1
        self.model.eval()
        n_tok = total_tokens * self.cfg.epochs_per_round
        dt = time.perf_counter() - t0
        n_b = offp["n"]
        return {
            # Effective sample size of the off-policy weights over tokens with behaviour logprobs, as a
            # fraction of those tokens (1.0 = no correction needed); 1.0 when there were none.
            "tis_ess": (offp["w_sum"] ** 2 / (n_b * offp["w_sq_sum"])) if n_b and offp["w_sq_sum"] else 1.0,
            "tis_truncated_frac": offp["truncated"] / n_b if n_b else 0.0,
            "tis_masked_frac": offp["masked"] / n_b if n_b else 0.0,
            "behaviour_log_ratio_abs": offp["log_rho_abs_sum"] / n_b if n_b else 0.0,
            "behaviour_tokens": int(n_b),
            "loss": loss_total / self.cfg.epochs_per_round,
            "grad_norm": grad_norm,
            "clip_low_frac": clip_low / n_tok,
            "clip_high_frac": clip_high / n_tok,
            "train_tokens": int(total_positions * self.cfg.epochs_per_round),
            "train_s": dt,
        }
