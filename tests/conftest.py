"""Shared fixtures. Every test run uses its own model cache (SAPO_CACHE_DIR), never ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sapo-cache")
    old = os.environ.get("SAPO_CACHE_DIR")
    os.environ["SAPO_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SAPO_CACHE_DIR", None)
    else:
        os.environ["SAPO_CACHE_DIR"] = old


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
