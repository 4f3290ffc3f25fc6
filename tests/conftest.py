"""Shared test settings: `gpu` tests skip cleanly where no CUDA GPU is present."""
from __future__ import annotations

import pytest


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
