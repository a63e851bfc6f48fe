"""The ``fast`` generator: static KV cache, the decode step replayed from a CUDA graph, sampling on device.

Why: on a GPU a small model's decode step is launch-bound. Measured on an H100 (Qwen2.5-0.5B shape, batch
64) the plain loop spends ~60 ms per step issuing a few hundred small kernels from Python. Capturing one
decode step in a CUDA graph replays all of them with one launch. A graph needs fixed shapes and fixed
addresses, so:

- the KV cache is a transformers ``StaticCache`` of ``width + max_new_tokens`` slots, one per (batch size,
  length bucket); prompt widths are rounded up to a multiple of ``WIDTH_BUCKET`` so a handful of graphs
  serve every round;
- the attention mask is a 4D boolean buffer ``(B, 1, 1, cache_len)`` that this loop updates in place
  (transformers takes a 4D mask as is, so none of its mask building runs inside the graph); left padding
  and not-yet-written slots are masked, position ids come from the mask like in the ``hf`` loop;
- the last batch of a round is padded with dummy rows to the full batch size, so it reuses the graph.

Sampling (temperature, top-k, top-p, multinomial with a seeded ``torch.Generator``) runs eagerly on the
device from the graph's logits buffer, with the same ``filter_logits`` as the ``hf`` backend, so behaviour
logprobs are exact for the distribution sampled from.

On CUDA the generator keeps a private copy of the weights in bfloat16 (``sync_weights`` copies the
trainer's float32 weights into it in place): autocast's weight-cast cache must not be captured into a
graph, and a bf16 copy makes the casts disappear from every decode step. On a CPU (or with
``generation.cuda_graphs: false``, or if capture fails) the same static-cache loop runs eagerly.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import torch

from node.generator.hf import HFGenerator
from node.rollout import Completion

WIDTH_BUCKET = 32
EOS_CHECK_EVERY = 8
"""Steps between host syncs that check whether every row has finished."""


class _Slot:
    """Static buffers (and optionally a captured graph) for one (batch, cache length) shape."""

    def __init__(self, gen: FastGenerator, b: int, cache_len: int):
        from transformers import StaticCache

        self.b, self.cache_len = b, cache_len
        dev = gen.device
        try:
            self.cache = StaticCache(config=gen.model.config, max_cache_len=cache_len)
        except TypeError:  # older transformers: batch size and device up front
            self.cache = StaticCache(config=gen.model.config, max_batch_size=b, max_cache_len=cache_len,
                                     device=dev, dtype=gen.compute_dtype)
        self.tok = torch.zeros((b, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((b, 1), dtype=torch.long, device=dev)
        self.cache_pos = torch.zeros((1,), dtype=torch.long, device=dev)
        self.kv_valid = torch.zeros((b, cache_len), dtype=torch.bool, device=dev)
        self.mask = self.kv_valid.view(b, 1, 1, cache_len)  # a view: updates to kv_valid are seen by the graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def reset(self) -> None:
        self.cache.reset()
        self.kv_valid.zero_()


class FastGenerator(HFGenerator):
    def __init__(self, model, tokenizer, cfg, precision: str = "auto", private_weights: bool = False):
        device = next(model.parameters()).device
        base_dtype = next(model.parameters()).dtype
        cuda = device.type == "cuda"
        bf16 = precision == "bf16" or (precision == "auto" and cuda)
        self.compute_dtype = torch.bfloat16 if (cuda and bf16) else base_dtype
        if private_weights or self.compute_dtype != base_dtype:
            model = copy.deepcopy(model).to(self.compute_dtype).eval().requires_grad_(False)
        super().__init__(model, tokenizer, cfg, precision="fp32")  # weights already in the compute dtype
        self.use_graphs = bool(cfg.cuda_graphs) and cuda
        self.graph_failures = 0
        self._slots: dict[tuple[int, int], _Slot] = {}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._pass_cache_position = "cache_position" in inspect.signature(base.forward).parameters
        self._graph_pool = None

    # ------------------------------------------------------------------ forward passes
    def _forward(self, slot: _Slot, ids, mask4d, pos, cache_pos):
        kw = {"cache_position": cache_pos} if self._pass_cache_position else {}
        return self.model(input_ids=ids, attention_mask=mask4d, position_ids=pos, use_cache=True,
                          **{self._cache_kw: slot.cache}, **kw).logits

    def _decode(self, slot: _Slot) -> torch.Tensor:
        if slot.graph is not None:
            slot.graph.replay()
            return slot.logits
        return self._forward(slot, slot.tok, slot.mask, slot.pos, slot.cache_pos)[:, -1]

    def _capture(self, slot: _Slot, width: int) -> None:
        """Record one decode step. The cache must have been written by a prefill (lazy allocation)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as CUDA graph capture requires
                self._forward(slot, slot.tok, slot.mask, slot.pos, slot.cache_pos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            logits = self._forward(slot, slot.tok, slot.mask, slot.pos, slot.cache_pos)[:, -1]
        self._graph_pool = graph.pool()
        slot.graph, slot.logits = graph, logits

    def _slot(self, b: int, cache_len: int) -> _Slot:
        key = (b, cache_len)
        if key not in self._slots:
            self._slots[key] = _Slot(self, b, cache_len)
        return self._slots[key]

    # ------------------------------------------------------------------ sampling
    # generate() is HFGenerator's: the same batching and seeding, its autocast a no-op at precision fp32.

    def _sample_batch(self, prompts: list[list[int]], gen: torch.Generator) -> list[Completion]:
        cfg = self.cfg
        real = len(prompts)
        if self.use_graphs and real < cfg.batch_size:  # pad with dummy rows so the graph is reused
            prompts = prompts + [prompts[0]] * (cfg.batch_size - real)
        b = len(prompts)
        longest = max(len(p) for p in prompts)
        width = -(-longest // WIDTH_BUCKET) * WIDTH_BUCKET
        cache_len = width + cfg.max_new_tokens
        slot = self._slot(b, cache_len)
        slot.reset()
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((b, width), dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            valid[i, width - len(p):] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        slot.kv_valid[:, :width] = valid
        causal = torch.ones((width, cache_len), dtype=torch.bool, device=self.device).tril()
        prefill_mask = (causal[None] & slot.kv_valid[:, None, :])[:, None]
        logits = self._forward(slot, ids, prefill_mask, pos, torch.arange(width, device=self.device))[:, -1]
        if self.use_graphs and slot.graph is None:
            try:
                slot.pos.copy_(pos[:, -1:] + 1)
                slot.cache_pos.fill_(width)
                self._capture(slot, width)
            except Exception as exc:  # a model whose forward cannot be captured: run eagerly
                warnings.warn(f"fast generator: CUDA graph capture failed ({exc!r}); decoding eagerly")
                self.use_graphs, slot.graph = False, None
                self.graph_failures += 1
            # Warm-up and capture wrote into the cache: start this batch again from a clean prefill.
            slot.reset()
            slot.kv_valid[:, :width] = valid
            logits = self._forward(slot, ids, prefill_mask, pos, torch.arange(width, device=self.device))[:, -1]
        slot.pos.copy_(pos[:, -1:])
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        toks, lps = [], []
        for step in range(cfg.max_new_tokens):
            tok, lp, finished = self._sample_step(logits, gen, finished)
            toks.append(tok)
            lps.append(lp)
            if step == cfg.max_new_tokens - 1:
                break
            if (step + 1) % EOS_CHECK_EVERY == 0 and bool(finished[:real].all()):
                break
            slot.tok.copy_(tok[:, None])
            slot.pos.add_(1)
            slot.cache_pos.fill_(width + step)
            slot.kv_valid[:, width + step] = True
            logits = self._decode(slot)
        tok_mat = torch.stack(toks, 1)[:real].cpu().tolist()
        lp_mat = torch.stack(lps, 1)[:real].float().cpu().tolist()
        return self._completions(tok_mat, lp_mat)
