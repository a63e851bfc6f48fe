"""The embedded default model: a tiny causal LM built locally, no download.

``embedded:tiny`` is a Qwen2-architecture model (2 layers, hidden 128, ~0.5 M parameters) with a
character tokenizer over printable ASCII plus ``<answer>``/``</answer>`` as single tokens. Random weights
solve nothing, so it is warm-started by a short, seeded supervised pass on the default task mix (prompt ->
``<answer>N</answer><eos>``), which leaves its sampled success rate well above 0 and well below 1: room for
RL to show. The result is cached under ``$SAPO_CACHE_DIR`` (default ``~/.cache/sapo-swarm``) with a
manifest of sha256 digests; a cache that fails the check is rebuilt. A file lock lets many local nodes
(the harness) share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import string
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from node.tasks.rewards import ANSWER_CLOSE, ANSWER_OPEN

# Bump when the build recipe changes so old caches are not reused.
BUILD_VERSION = 1
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
WARM_START_SEED = 1_000_003  # question stream for the warm start, disjoint from training seeds 0..N


@dataclass(frozen=True)
class EmbeddedSpec:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 512
    vocab_size: int | None = None
    """None: the tokenizer's size. A larger vocabulary only adds unused rows (to mimic a real model's shape)."""
    tie_embeddings: bool = True


EMBEDDED_MODELS = {
    "tiny": EmbeddedSpec(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=384),
    "small": EmbeddedSpec(layers=4, hidden=192, heads=6, kv_heads=2, intermediate=576),
    # Qwen2.5-0.5B's exact shape with random weights: for GPU throughput/memory checks without a download
    # (use with model.warm_start_steps=0; it cannot learn anything useful through a character tokenizer).
    "qwen2.5-0.5b-shape": EmbeddedSpec(layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864,
                                       max_positions=32768, vocab_size=151936),
}


def cache_root() -> Path:
    return Path(os.environ.get("SAPO_CACHE_DIR") or Path.home() / ".cache" / "sapo-swarm")


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    specials = [PAD, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    # BPE with no merges = one token per character; unknown characters map to <unk>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    tok.add_tokens([AddedToken(ANSWER_OPEN, normalized=False), AddedToken(ANSWER_CLOSE, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_model(spec: EmbeddedSpec, tokenizer, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=spec.vocab_size or len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def _warm_start_batch(tokenizer, mix, step: int, batch: int):
    from node.tasks import resolve

    refs = mix.refs_for_round(step, batch)
    seqs, masks = [], []
    for ref in refs:
        task = resolve(ref)
        p = tokenizer(prompt_text(tokenizer, task.question, ""), add_special_tokens=False)["input_ids"]
        c = tokenizer(f"{ANSWER_OPEN}{task.answer}{ANSWER_CLOSE}", add_special_tokens=False)["input_ids"]
        c = c + [tokenizer.eos_token_id]
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lmask = torch.zeros((len(seqs), width))
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        lmask[i, : len(m)] = torch.tensor(m, dtype=torch.float)
        att[i, : len(s)] = 1
    return ids, att, lmask


def warm_start(model, tokenizer, steps: int, progress=None, lr: float = 1e-3, batch: int = 64) -> None:
    """Seeded supervised pass on the default task mix: loss on the answer tokens only."""
    from node.config import TasksConfig
    from node.tasks import TaskMix

    mix = TaskMix(TasksConfig().mix, seed=WARM_START_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    torch.manual_seed(WARM_START_SEED)
    for step in range(steps):
        ids, att, lmask = _warm_start_batch(tokenizer, mix, step, batch)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
        ).view(ids.size(0), -1)
        m = lmask[:, 1:]
        loss = (nll * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    model.eval()


def prompt_text(tokenizer, question: str, system_prompt: str) -> str:
    """The prompt string for a question: the chat template where the tokenizer has one, else bare."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": question}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return question + "\n"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_ok(d: Path) -> bool:
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        files = manifest["files"]
        return bool(files) and all(_digest(d / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def embedded_dir(variant: str, warm_start_steps: int) -> Path:
    from node.config import TasksConfig

    spec = EMBEDDED_MODELS[variant]
    mix = [s.model_dump(mode="json") for s in TasksConfig().mix]  # what the warm start trains on
    key = json.dumps({"v": BUILD_VERSION, "spec": asdict(spec), "ws": warm_start_steps, "mix": mix},
                     sort_keys=True)
    return cache_root() / "models" / f"{variant}-ws{warm_start_steps}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def ensure_embedded(variant: str, warm_start_steps: int, log=print) -> Path:
    """Path of a verified cached build of the embedded model, building it first if needed."""
    if variant not in EMBEDDED_MODELS:
        raise ValueError(
            f"model.name: unknown embedded model 'embedded:{variant}'; use one of "
            + ", ".join(f"embedded:{k}" for k in EMBEDDED_MODELS)
        )
    target = embedded_dir(variant, warm_start_steps)
    with _locked(target.with_name(target.name + ".lock")):
        if _manifest_ok(target):
            return target
        if target.exists():
            log(f"cached model at {target} failed its integrity check; rebuilding")
            shutil.rmtree(target)
        _build_into(variant, warm_start_steps, target, log)
    return target


def _build_into(variant: str, steps: int, target: Path, log) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    spec = EMBEDDED_MODELS[variant]
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = build_model(spec, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"building embedded:{variant} ({n_params / 1e6:.2f} M parameters), warm start {steps} steps "
        f"-> {target}")
    with Progress(TextColumn("[bold]warm start"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=False) as bar:
        job = bar.add_task("warm", total=steps, loss=float("nan"))

        def progress(done, total, loss):
            bar.update(job, completed=done, loss=loss)

        warm_start(model, tokenizer, steps, progress=progress)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {p.name: _digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"variant": variant, "warm_start_steps": steps, "build_version": BUILD_VERSION,
                "parameters": n_params, "build_s": round(time.time() - t0, 1), "files": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)  # atomic: readers see either no build or a complete one
    log(f"built embedded:{variant} in {time.time() - t0:.1f} s")
