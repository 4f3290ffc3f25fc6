"""Small hardware profiles on paper for tests: independent of the machine the tests run on, and free
(measuring the local profile costs seconds)."""
from __future__ import annotations

from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, HardwareProfile


def paper_cpu_profile(*, name: str = "cpu-x86_64", model: str = "test", arch: str = "x86_64",
                      isa: tuple[str, ...] = ("avx2",), links: dict[str, float] | None = None) -> HardwareProfile:
    """A 2-core CPU-only profile with 16 GiB, 10 GB/s and 100 GFLOP/s float32."""
    return HardwareProfile(
        name=name, measured=False,
        cpu=CpuInfo(model=model, arch=arch, isa=isa, physical_cores=2, logical_cores=2, memory_bytes=2**34),
        units=(ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**34, memory_bandwidth=1e10,
                           gemm_flops={"float32": 1e11}),),
        links=links or {})
