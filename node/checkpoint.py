"""Atomic checkpoints under ``RUN_DIR/checkpoints/round-NNNNNN/``.

Each checkpoint is written into a temporary sibling directory, every file is fsynced, and the directory is
renamed into place: a crash (kill -9, power loss) leaves either the previous checkpoint set or the new one
complete, never a half-written ``round-*`` directory. Contents: ``model.safetensors`` (all weights, or only
the trainable LoRA weights), ``optimizer.pt`` (tensors only, loaded with ``weights_only=True``),
``rng.pt`` and ``state.json`` (round, timestamps, anything the runtime adds).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

_NAME = re.compile(r"^round-(\d{6,})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def _trainable_state(model) -> tuple[dict[str, torch.Tensor], bool]:
    if hasattr(model, "disable_adapter"):  # peft: only the adapter weights change
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}, True
    return {}, False


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(run_dir: Path, round_idx: int, model, optimizer, state: dict | None = None,
                    keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{round_idx:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    adapter, is_lora = _trainable_state(model)
    if is_lora:
        save_file(adapter, str(tmp / "model.safetensors"), metadata={"kind": "lora"})
    else:
        save_model(model, str(tmp / "model.safetensors"), metadata={"kind": "full"})
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = rng_state()
    torch.save({"torch": rng["torch"], "cuda": rng.get("cuda", []),
                "numpy": [rng["numpy"][0], torch.from_numpy(rng["numpy"][1].astype(np.int64)), *rng["numpy"][2:]],
                "python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]]}, tmp / "rng.pt")
    meta = {"round": round_idx, "saved_at": time.time(), **(state or {})}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():  # same round saved again (e.g. after a resume): swap, old copy kept until the end
        old = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    for _, p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a crashed writer
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, restore_rng: bool = True) -> dict:
    """Load weights, optimizer and RNG from ``path`` into the live objects; returns ``state.json``."""
    path = Path(path)
    weights = path / "model.safetensors"
    adapter, is_lora = _trainable_state(model)
    if is_lora:
        missing = set(adapter) - set(load_file(str(weights)))
        if missing:
            raise RuntimeError(f"checkpoint {path} lacks LoRA weights {sorted(missing)[:3]}...; was it saved "
                               "from a model with the same model.lora settings?")
        model.load_state_dict(load_file(str(weights), device=str(next(model.parameters()).device)), strict=False)
    else:
        load_model(model, str(weights), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                         map_location=next(model.parameters()).device))
    if restore_rng:
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        p = rng["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
    return json.loads((path / "state.json").read_text())
