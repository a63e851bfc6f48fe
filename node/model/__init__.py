"""Load the policy: a Hugging Face causal LM (hub id or local path) or an embedded model built locally."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from node.config import EMBEDDED_PREFIX, ModelConfig
from node.model.embedded import prompt_text

__all__ = ["autocast", "load_policy", "prompt_text", "resolve_device", "resolve_dtype"]


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` bf16, or auto on CUDA; a no-op context otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible; set device: cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_policy(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, log=print):
    """Return ``(model, tokenizer)``; the model is on ``device`` in ``dtype``, wrapped by peft if LoRA is on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.embedded:
        from node.model.embedded import ensure_embedded

        path = str(ensure_embedded(cfg.name[len(EMBEDDED_PREFIX):], cfg.warm_start_steps, log=log))
        revision = None
    else:
        path, revision = cfg.name, cfg.revision
    if cfg.embedded:
        # Loaded by class: AutoTokenizer would pick the architecture's tokenizer (Qwen2) over tokenizer.json.
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
    model.to(device)
    if cfg.lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RuntimeError("model.lora.enabled needs peft: pip install 'sapo-swarm[lora]'") from None
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in cfg.lora.target_modules if t in present]
        if not targets:
            raise ValueError(f"model.lora.target_modules {cfg.lora.target_modules} match no module of "
                             f"{cfg.name}; pick names from its layers, e.g. q_proj, v_proj")
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    model.eval()
    return model, tokenizer
