"""Shared fixtures: one trained tiny model and one extracted digits store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache() -> Path:
    """The user cache (as for users): the tiny model is trained once per machine, then reused.

    Set OODBENCH_TEST_FRESH_CACHE=1 to train it from scratch into a temporary directory.
    """
    if os.environ.get("OODBENCH_TEST_FRESH_CACHE"):
        import tempfile

        os.environ["OODBENCH_CACHE"] = tempfile.mkdtemp(prefix="oodbench-cache-")
    from oodbench.paths import cache_dir

    return cache_dir()


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory, _cache) -> dict:
    """The digits benchmark extracted (with all layers and local embeddings) and scored."""
    from oodbench import api

    store = tmp_path_factory.mktemp("store")
    key = api.extract(benchmark="digits", store=store, layers="all", local=True, device="cpu")
    records = api.score(benchmark="digits", store=store, model_key=key)
    return {"store": store, "key": key, "records": {r.method: r for r in records}}


@pytest.fixture(scope="module")
def two_torch_threads():
    """At most two torch threads for a module's training tests (CI has two cores), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)
