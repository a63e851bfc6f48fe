"""Generator backends behind one interface (``base.Generator``).

``hf``: transformers forward passes with a dynamic KV cache (any device). ``fast``: static KV cache and a
CUDA-graph decode step (node/generator/fast.py; eager on a CPU). ``vllm``: a colocated vLLM engine
(node/generator/vllm.py; GPU, optional extra).
"""

import copy

from node.generator.base import Generator


def make_generator(cfg, model, tokenizer, precision: str = "auto", private_weights: bool = False) -> Generator:
    """The configured backend. ``private_weights``: sample from a copy of ``model`` (the async pipeline's
    generator thread), kept current with ``Generator.sync_weights``, instead of ``model`` itself."""
    if cfg.backend == "hf":
        from node.generator.hf import HFGenerator

        if private_weights:
            model = copy.deepcopy(model).eval().requires_grad_(False)
        return HFGenerator(model, tokenizer, cfg, precision)
    if cfg.backend == "fast":
        from node.generator.fast import FastGenerator

        return FastGenerator(model, tokenizer, cfg, precision, private_weights=private_weights)
    if cfg.backend == "vllm":
        from node.generator.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, cfg, precision)
    raise ValueError(f"generation.backend: unknown backend {cfg.backend!r}; use hf, fast or vllm")


__all__ = ["Generator", "make_generator"]
