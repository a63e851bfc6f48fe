"""Helpers for tests that run real `sapo` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from node.metrics import read_rows

# Tests need no learning, only a real model: a 20-step warm start builds in about a second.
FAST = ["--set", "model.warm_start_steps=20", "--set", "threads=1"]
# A node alone (no transport): for tests of the training loop itself.
SOLO = [*FAST, "--set", "swarm.enabled=false"]


def sapo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", *args]


def run_sapo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(sapo_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_sapo(*args: str, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(sapo_cmd(*args), stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def metrics(run_dir: Path) -> list[dict]:
    return read_rows(run_dir)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started (by pid), escalating to SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
