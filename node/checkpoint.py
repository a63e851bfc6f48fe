"""Atomic checkpoints under ``RUN_DIR/checkpoints/round-NNNNNN/``.

Each checkpoint is written into a temporary sibling directory, every file is fsynced, and the directory is
renamed into place: a crash (kill -9, power loss) leaves either the previous checkpoint set or the new one
complete, never a half-written ``round-*`` directory. Contents: ``model.safetensors`` (all weights, or only
the trainable LoRA weights), ``optimizer.pt`` (tensors only, loaded with ``weights_only=True``),
``rng.pt`` and ``state.json`` (round, timestamps, anything the runtime adds).

Crash and fault behaviour (tested with real processes in tests/integration/test_chaos.py):

* kill -9 while writing: only a ``.tmp-round-NNNNNN-PID`` directory is left; ``list_checkpoints`` ignores it and
  the next save removes it (the writer's pid is in the name, so a live writer's directory is never touched).
* kill -9 between the two renames of a same-round re-save: the complete old copy is still there as
  ``.old-round-NNNNNN-PID`` and counts as that round until the next save puts ``round-NNNNNN`` back.
* Disk full (ENOSPC/EDQUOT): the temporary directory is removed and ``DiskFullError`` (an ``OSError`` that names
  the path and says the disk is full) is raised; the previous checkpoints are untouched.

Test-only hook: ``SAPO_TEST_CHECKPOINT_PAUSE_S=<seconds>`` makes ``save_checkpoint`` sleep after the temporary
directory is complete and fsynced, right before the rename, so that a test can kill the process inside the write
window deterministically. Never set it outside tests.
"""

from __future__ import annotations

import errno
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
_OLD = re.compile(r"^\.old-round-(\d{6,})-\d+$")
PAUSE_ENV = "SAPO_TEST_CHECKPOINT_PAUSE_S"
"""Test-only: seconds to sleep between a complete temporary checkpoint and its rename (see module docstring)."""
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The run dir's file system is full; the message names the path (``str()`` is the message alone)."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def _caused_by_full_disk(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if is_disk_full(exc) or "No space left on device" in str(exc) or "os error 28" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _no_space_left(path: Path, margin: int = 64 * 1024) -> bool:
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def disk_full_error(exc: OSError, path: Path, what: str) -> DiskFullError:
    return DiskFullError(exc.errno, f"disk full: no space left on device while writing {what} {path} "
                                    f"({os.strerror(exc.errno)})", str(path))


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
    found: dict[int, Path] = {}
    olds: dict[int, Path] = {}
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            found[int(m.group(1))] = p
        m = _OLD.match(p.name)
        if m and (p / "state.json").is_file():
            olds[int(m.group(1))] = p
    for r, p in olds.items():  # a re-save of round r died between its two renames: the old copy is complete
        found.setdefault(r, p)
    return sorted(found.items())


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
    """Write ``round-NNNNNN`` atomically; raises ``DiskFullError`` (leaving no temporary files) if the disk fills."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"round-{round_idx:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, round_idx, model, optimizer, state)
    except Exception as exc:
        # torch.save and safetensors write from C++/Rust: a full disk reaches us as RuntimeError or
        # SafetensorError, not OSError, so look at the chain and, failing that, at the free space itself.
        full = _caused_by_full_disk(exc) or _no_space_left(root)
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a partial write took; never taken as a checkpoint
        if full:
            raise disk_full_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), tmp, "checkpoint") from exc
        raise
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause > 0:  # test-only: hold the write window open (see module docstring)
        time.sleep(pause)
    if final.exists():  # same round saved again (e.g. after a resume): swap, old copy kept until the end
        old = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    for p in root.glob(".old-*"):  # a crashed same-round swap: put a complete old copy back, else drop it
        m = _OLD.match(p.name)
        back = root / f"round-{m.group(1)}" if m else None
        if back is not None and (p / "state.json").is_file() and not back.exists():
            os.rename(p, back)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for _, p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a crashed writer (never this process's own)
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    return final


def _write_files(tmp: Path, round_idx: int, model, optimizer, state: dict | None) -> None:
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


def disk_full_message(exc: OSError, run_dir: Path) -> str:
    """One paragraph for the operator: what failed, what is intact, what to do."""
    where = exc.filename or run_dir
    head = str(exc) if isinstance(exc, DiskFullError) else f"disk full: no space left on device while writing {where}"
    latest = latest_checkpoint(run_dir)
    intact = (f"the newest complete checkpoint {latest} is intact" if latest is not None
              else "no checkpoint was completed yet")
    return (f"{head}. {intact}; free space on the file system of {Path(run_dir).resolve()} and run the same "
            "command again to resume")


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
