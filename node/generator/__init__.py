"""Generator backends behind one interface (``base.Generator``): ``hf`` (transformers, CPU or GPU)."""

from node.generator.base import Generator


def make_generator(cfg, model, tokenizer, precision: str = "auto") -> Generator:
    if cfg.backend == "hf":
        from node.generator.hf import HFGenerator

        return HFGenerator(model, tokenizer, cfg, precision)
    raise ValueError(f"generation.backend: unknown backend {cfg.backend!r}; use hf")


__all__ = ["Generator", "make_generator"]
