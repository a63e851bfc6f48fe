"""The ``vllm`` generator: a colocated vLLM engine that the trainer updates in place.

UNTESTED ON REAL HARDWARE in this project: vLLM cannot run where this was written (no GPU; the lent GPU
machine has no vLLM). It is written against vLLM's documented offline API (``vllm>=0.10.2``) and tested in
CI against a fake engine (tests/unit/node/test_vllm_generator.py) that checks what is sent to the engine
and how its answers are read. What it relies on:

- ``LLM(model=..., logprobs_mode="processed_logprobs", enable_sleep_mode=..., gpu_memory_utilization=...,
  worker_extension_cls=...)``: processed logprobs are those of the distribution actually sampled from
  (after temperature / top-k / top-p), i.e. the behaviour logprobs the trainer's off-policy correction
  needs (the default, raw logprobs, would be the unscaled model distribution);
- ``LLM.generate(prompts, sampling_params, use_tqdm=False)`` with ``TokensPrompt`` inputs (this node
  tokenises, so the trainer's token ids and the engine's agree) and one ``SamplingParams`` per prompt (a
  per-prompt seed derived from the round seed: resumable, and prompts do not share sampling noise);
- ``LLM.collective_rpc(method, args=...)`` calling :class:`WeightLoader`, a worker extension, whose
  method feeds ``(name, tensor)`` pairs to the model runner's ``model.load_weights`` (vLLM maps Hugging
  Face parameter names, including fused q/k/v and gate/up projections). The engine core runs in this
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so tensors pass by reference: an in-place update, no
  restart and no serialisation;
- ``LLM.sleep(level=2)`` / ``LLM.wake_up(tags=[...])`` in ``runtime.mode: sync``: while the trainer
  steps, the engine frees its weights and KV cache; on waking it takes the new weights first, then
  re-allocates the KV cache. In ``async`` mode the engine stays awake and shares the GPU through
  ``generation.vllm.gpu_memory_utilization``.
"""

from __future__ import annotations

import os
import types
from typing import Any, Iterable

import torch

from node.generator.base import Generator
from node.rollout import Completion


def _vllm_api() -> types.SimpleNamespace:
    # In-process engine core: collective_rpc passes the trainer's tensors by reference.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise RuntimeError("generation.backend: vllm needs vLLM on a CUDA machine: "
                           "pip install 'sapo-swarm[vllm]' (or use backend: fast / hf)") from None
    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, TokensPrompt=TokensPrompt)


class WeightLoader:
    """vLLM worker extension (``worker_extension_cls``): mixed into the worker, so ``self`` is the worker."""

    def load_policy_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        self.model_runner.model.load_weights(weights=weights)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(weights)


def export_weights(model) -> tuple[list[tuple[str, torch.Tensor]], Any]:
    """``(name, tensor)`` pairs under the base model's Hugging Face names, and an undo callable.

    For a peft (LoRA) model the adapters are merged into the base weights first (peft's ``merge_adapter``)
    and the names lose peft's wrapping (``base_model.model.`` prefix, ``.base_layer`` infix); call the
    returned undo once the engine has copied them, to unmerge.
    """
    undo = None
    if hasattr(model, "merge_adapter") and hasattr(model, "get_base_model"):
        model.merge_adapter()
        undo = model.unmerge_adapter
        base = model.get_base_model()
    else:
        base = model
    pairs = []
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        pairs.append((name.replace(".base_layer", ""), p.detach()))
    return pairs, undo


class VLLMGenerator(Generator):
    model = None  # the engine holds its own copy of the weights

    def __init__(self, model, tokenizer, cfg, precision: str = "auto", engine=None, api=None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.api = api or _vllm_api()
        self.sleep_between_rounds = bool(cfg.vllm.enable_sleep_mode)
        """Sleep while the trainer steps (sync mode); the async pipeline turns it off."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.source = getattr(base.config, "_name_or_path", None) or getattr(base, "name_or_path", None)
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        ids = {eos} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = sorted(i for i in ids if i is not None)
        self.engine = engine if engine is not None else self._make_engine(precision)
        self._pending = model  # the engine loaded the checkpoint on disk; a resumed run has other weights
        self._policy = model  # whose weights a level-2 sleep discards and waking restores
        self._asleep = False
        self._tokens = 0
        self.weight_pushes = 0

    def _make_engine(self, precision: str):
        v = self.cfg.vllm
        max_len = v.max_model_len or (self.cfg.max_prompt_tokens + self.cfg.max_new_tokens)
        return self.api.LLM(
            model=self.source, dtype="bfloat16" if precision in ("auto", "bf16") else "float32",
            gpu_memory_utilization=v.gpu_memory_utilization, enable_sleep_mode=v.enable_sleep_mode,
            enforce_eager=v.enforce_eager, max_model_len=max_len, seed=0,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{WeightLoader.__module__}.{WeightLoader.__qualname__}",
        )

    @property
    def tokens_generated(self) -> int:
        return self._tokens

    def sync_weights(self, model) -> None:
        """Push ``model``'s weights into the engine now (the caller holds the trainer's update lock in async
        mode), or, while the engine sleeps, as it wakes up for the next generate."""
        self._policy = model
        if self._asleep:
            self._pending = model
        else:
            self._push(model)

    def _wake(self) -> None:
        if not self._asleep:
            return
        # Weights first, so the KV cache is allocated next to the new weights, not before them.
        try:
            self.engine.wake_up(tags=["weights"])
            tagged = True
        except TypeError:  # an engine without tagged wake-up
            self.engine.wake_up()
            tagged = False
        self._push(self._pending or self._policy)  # sleep level 2 discarded the engine's weights
        if tagged:
            self.engine.wake_up(tags=["kv_cache"])
        self._asleep = False

    def _push(self, model) -> None:
        pairs, undo = export_weights(model)
        try:
            self.engine.collective_rpc("load_policy_weights", args=(pairs,))
        finally:
            if undo is not None:
                undo()
        self._pending = None
        self.weight_pushes += 1

    def _params(self, n: int, seed: int):
        c = self.cfg
        return self.api.SamplingParams(
            n=n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k if c.top_k > 0 else -1,
            max_tokens=c.max_new_tokens, logprobs=0, seed=seed, stop_token_ids=list(self.eos_ids),
            detokenize=False,
        )

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[Completion]]:
        self._wake()
        if self._pending is not None:
            self._push(self._pending)
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"][-self.cfg.max_prompt_tokens:]
               for p in prompts]
        inputs = [self.api.TokensPrompt(prompt_token_ids=x) for x in ids]
        params = [self._params(n, (seed + 1_000_003 * i) & 0x7FFFFFFF) for i in range(len(prompts))]
        outputs = self.engine.generate(inputs, params, use_tqdm=False)
        result = [self._completions(out.outputs) for out in outputs]
        if self.sleep_between_rounds:
            self.engine.sleep(level=2)  # weights are re-sent on waking anyway
            self._asleep = True
        return result

    def _completions(self, outs: Iterable) -> list[Completion]:
        eos = set(self.eos_ids)
        res = []
        for o in outs:
            toks = list(o.token_ids)
            if o.logprobs is None:
                raise RuntimeError("vLLM returned no logprobs; the engine must be asked for logprobs=0")
            lps = [float(step[t].logprob) for t, step in zip(toks, o.logprobs)]
            finished = bool(toks) and toks[-1] in eos and o.finish_reason == "stop"
            text_ids = toks[:-1] if finished else toks
            self._tokens += len(toks)
            res.append(Completion(text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                                  token_ids=toks, logprobs=lps, finished=finished))
        return res
