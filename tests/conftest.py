"""Shared test settings.

- Every test session gets its own empty AutoSurgeon cache, so the suite proves on this machine what it
  would on a fresh one (trained zoo recipes, the local profile and compiled kernels are rebuilt, not
  read from ``~/.cache``). Set ``AUTOSURGEON_TEST_CACHE=DIR`` to reuse one between runs while iterating.
- ``gpu`` tests skip cleanly where no CUDA GPU is present.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_SESSION_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_CACHE
    reuse = os.environ.get("AUTOSURGEON_TEST_CACHE")
    if reuse:
        os.environ["AUTOSURGEON_CACHE"] = reuse
    else:
        _SESSION_CACHE = tempfile.mkdtemp(prefix="autosurgeon-test-cache-")
        os.environ["AUTOSURGEON_CACHE"] = _SESSION_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def _cuda_available() -> bool:
    # Only asked when a gpu-marked test is collected, so plain test runs never touch CUDA.
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
        for item in gpu_items:
            item.add_marker(skip)
