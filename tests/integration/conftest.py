"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
import subprocess

import pytest

from swarm.transport.peer_process import REPO_ROOT
from tests.integration.helpers import sapo_cmd, stop


@pytest.fixture
def ns_procs(tmp_path):
    """``start(ns, *sapo args, name=...)`` runs ``sapo`` in a namespace, logging to tmp_path/<name>.log."""
    procs: dict[str, subprocess.Popen] = {}
    logs = []

    def start(ns: str, *args: str, name: str) -> subprocess.Popen:
        f = open(tmp_path / f"{name}.log", "w")
        logs.append(f)
        p = subprocess.Popen(["ip", "netns", "exec", ns, *sapo_cmd(*args)], stdout=f, stderr=subprocess.STDOUT,
                             cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs[name] = p
        return p

    start.procs = procs
    try:
        yield start
    finally:
        for p in procs.values():
            stop(p)
        for f in logs:
            f.close()
