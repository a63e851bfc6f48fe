"""Hugging Face transformers generator: batched ancestral sampling with a KV cache.

Why a hand-written decode loop instead of ``model.generate``: the trainer's importance weights need the
exact log-probability of every sampled token *under the distribution it was sampled from* (after
temperature / top-k / top-p). ``generate`` exposes that only through ``output_scores``, which keeps a
(batch x vocab) tensor per step (about 1 GB for 64 x 24 steps at a 151 k vocabulary), and it silently
merges the checkpoint's own ``generation_config`` (repetition penalty, top-k 20, ...) into the sampling
distribution. This loop samples from exactly ``softmax(filter(logits / T))``, keeps one logprob per token,
and uses position ids from the attention mask so that left padding does not shift positions: the trainer's
forward pass over the same tokens reproduces the same logprobs (tested).
"""

from __future__ import annotations

import inspect

import torch

from node.generator.base import Generator
from node.model import autocast
from node.rollout import Completion


def filter_logits(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) tokens outside top-k and outside the top-p nucleus; ``scores`` already divided by T."""
    if top_k and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
        probs = torch.softmax(sorted_scores, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (the first token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


class HFGenerator(Generator):
    def __init__(self, model, tokenizer, cfg, precision: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.precision = precision
        self.device = next(model.parameters()).device
        eos = tokenizer.eos_token_id
        gen_cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = {eos} | set(gen_cfg if isinstance(gen_cfg, list) else [gen_cfg] if gen_cfg is not None else [])
        self.eos_ids = torch.tensor(sorted(i for i in ids if i is not None), device=self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self._tokens = 0
        # transformers 5.2x renamed the KV-cache argument `past_key_values` -> `cache`; support both.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._prefill_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @staticmethod
    def _cache(out):
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    @property
    def tokens_generated(self) -> int:
        return self._tokens

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        out = []
        for p in prompts:
            ids = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            out.append(ids[-self.cfg.max_prompt_tokens:])
        return out

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[Completion]]:
        prompt_ids = self.encode_prompts(prompts)
        flat = [ids for ids in prompt_ids for _ in range(n)]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        results: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.device, self.precision):
                for start in range(0, len(flat), self.cfg.batch_size):
                    results.extend(self._sample_batch(flat[start:start + self.cfg.batch_size], gen))
        finally:
            self.model.train(was_training)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _sample_step(self, logits: torch.Tensor, gen: torch.Generator, finished: torch.Tensor):
        """One token per row from ``softmax(filter(logits / T))``, its logprob under exactly that distribution,
        pad for rows already finished, and the updated finished mask."""
        cfg = self.cfg
        scores = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
        logp = torch.log_softmax(scores, dim=-1)
        tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(1)
        lp = logp.gather(1, tok[:, None]).squeeze(1)
        tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
        return tok, lp, finished | torch.isin(tok, self.eos_ids)

    def _sample_batch(self, prompts: list[list[int]], gen: torch.Generator) -> list[Completion]:
        cfg = self.cfg
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **self._prefill_kw)
        past, logits = self._cache(out), out.logits[:, -1]
        next_pos = pos[:, -1] + 1
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        toks, lps = [], []
        for step in range(cfg.max_new_tokens):
            tok, lp, finished = self._sample_step(logits, gen, finished)
            toks.append(tok)
            lps.append(lp)
            if bool(finished.all()) or step == cfg.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             use_cache=True, **{self._cache_kw: past})
            past, logits = self._cache(out), out.logits[:, -1]
            next_pos = next_pos + 1
        tok_mat = torch.stack(toks, 1).cpu().tolist()
        lp_mat = torch.stack(lps, 1).float().cpu().tolist()
        return self._completions(tok_mat, lp_mat)

    def _completions(self, tok_mat: list[list[int]], lp_mat: list[list[float]]) -> list[Completion]:
        """Cut each sampled row at its first EOS (kept in ``token_ids``, dropped from the text)."""
        eos = set(self.eos_ids.tolist())
        completions = []
        for row, lrow in zip(tok_mat, lp_mat):
            cut = next((j + 1 for j, t in enumerate(row) if t in eos), None)
            done = cut is not None
            seq = row[:cut] if done else row
            text_ids = seq[:-1] if done else seq
            self._tokens += len(seq)
            completions.append(Completion(
                text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                token_ids=seq, logprobs=lrow[:len(seq)], finished=done,
            ))
        return completions
