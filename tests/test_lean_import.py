"""Importing any of the five packages initialises neither CUDA nor NVML (DESIGN.md invariant)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PACKAGES = ["autosurgeon", "runtime", "envs", "agents", "experiments", "autosurgeon.cli"]

# Run in a fresh interpreter: this process may already have touched CUDA through other tests.
# NVML is trapped by making pynvml's nvmlInit raise; CUDA by checking torch's lazy-init flag.
PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import pynvml
    def _refuse(*args, **kwargs):
        raise SystemExit("NVML initialised during import of " + sys.argv[1])
    pynvml.nvmlInit = _refuse
    pynvml.nvmlInitWithFlags = _refuse
    package = importlib.import_module(sys.argv[1])
    if hasattr(package, "__path__"):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):  # running __main__ would start the CLI
                importlib.import_module(info.name)
    import torch
    if torch.cuda.is_initialized():
        raise SystemExit("CUDA initialised during import of " + sys.argv[1])
    """
)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_touches_neither_cuda_nor_nvml(package: str) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, package], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
