"""Which knob values a layer may take on one device: the validity rules behind SearchSpace masks.

Every rule answers "valid?" with ``None`` (valid) or a reason string (masked, and why), so ``check_plan``
can tell a user *why* a choice is refused. The rules read only the :class:`HardwareProfile` (facts and
listed rates) and the runtime's kernel registry (names, formats, device types) — never the local machine's
CUDA or CPU state — because a profile may describe a device on paper (a Jetson, an H100) that is not here.

Decisions (each documented where it is made):

* **float32** runs everywhere but on a DLA (NVDLA v2 computes in int8 and float16 only).
* **bfloat16** on a GPU needs a listed bfloat16 rate or compute capability >= 8.0 (Ampere's bf16 tensor
  cores); on a CPU it is always allowed: torch runs bf16 matmuls on every CPU, natively where the ISA has
  AVX512-BF16/AMX and by conversion elsewhere, so the choice still halves the weight bytes (the cost
  model's ``peak_flops`` falls back to the float32 rate where no bf16 rate is listed).
* **float16** everywhere (a DLA included).
* **int8 / int4** weight-only: linear layers only (``nn.Linear``, and Hugging Face's ``Conv1D``: a transposed
  linear that the transform turns into one) — ``runtime.kernels`` has ``QuantizedLinear`` and no quantized
  conv or embedding. Any in_features is allowed: int4 zero-pads K up
  to whole groups (``runtime/kernels/formats.py``), which is exact. int4 is masked on a DLA (no int4).
* **int8-dynamic** (fbgemm w8a8): a CPU unit on an x86-64 host with AVX2 (fbgemm's requirement); masked
  on GPUs, DLAs and Arm CPUs (there the quantized engine is qnnpack and the runtime has no kernel for it).
* **fp8**: a GPU with compute capability >= 8.9 or a listed float8 rate (``cuda-fp8``/``_scaled_mm``).
* **placement** "gpu*" needs a GPU unit ("gpu:N" the N-th of several), "cpu*" a CPU unit (GPU-only presets
  list none), "dla" a DLA unit (on paper: the runtime cannot execute there).
"""
from __future__ import annotations

from collections.abc import Callable

from autosurgeon import precisions as precision_table
from autosurgeon.hardware.profile import ComputeUnit, HardwareProfile
from autosurgeon.knobs import GROUP_SIZES, PLACEMENTS, PRECISIONS, placement_kind
from autosurgeon.multi.devices import device_reason
from runtime.kernels import all_kernels

# Precision -> runtime weight format (None: a float dtype); float precisions; bits per weight element (the
# semantic distance ``repair`` uses between precisions): all from the precision table.
PRECISION_FORMAT = precision_table.PRECISION_FORMAT
FLOAT_PRECISIONS = precision_table.FLOAT_PRECISIONS
PRECISION_BITS = precision_table.PRECISION_BITS
_FP8_MIN_CC = (8, 9)
_BF16_MIN_CC = (8, 0)
_INT4_BLOCK = 32  # runtime.kernels.formats: group sizes are multiples of 32


def _cc(profile: HardwareProfile, unit: ComputeUnit) -> tuple[int, int] | None:
    """Compute capability of a GPU unit ("cuda:N" -> profile.gpus[N]); None when unknown."""
    if unit.kind != "gpu":
        return None
    index = int(unit.name.split(":")[1]) if ":" in unit.name else 0
    for gpu in profile.gpus:
        if gpu.index == index and gpu.compute_capability:
            major, _, minor = gpu.compute_capability.partition(".")
            try:
                return int(major), int(minor or 0)
            except ValueError:
                return None
    return None


def _x86_avx2(profile: HardwareProfile) -> bool:
    return profile.cpu.arch in ("x86_64", "amd64", "AMD64") and any(f in profile.cpu.isa for f in ("avx2", "avx512f"))


def precision_reason(precision: str, unit: ComputeUnit, profile: HardwareProfile) -> str | None:
    """Why ``precision`` cannot run on ``unit`` of ``profile`` (None: it can). Layer rules are separate."""
    where = f"{unit.name} of {profile.name}"
    if unit.kind == "dla":
        if precision in ("int8", "float16"):
            return None
        return f"a DLA computes in int8 and float16 only ({where}, on paper)"
    if precision in ("float32", "float16", "int8", "int4"):
        return None
    if precision == "bfloat16":
        if unit.kind == "cpu" or "bfloat16" in unit.gemm_flops:
            return None
        cc = _cc(profile, unit)
        if cc is not None and cc >= _BF16_MIN_CC:
            return None
        return f"{where} has no bfloat16 rate and compute capability {cc or 'unknown'} < 8.0"
    if precision == "int8-dynamic":
        if unit.kind != "cpu":
            return f"int8-dynamic is fbgemm's CPU kernel; {where} is a {unit.kind}"
        if not _x86_avx2(profile):
            return (f"int8-dynamic needs fbgemm, i.e. an x86-64 CPU with AVX2; {where} is "
                    f"{profile.cpu.arch or 'an unknown arch'} with ISA {list(profile.cpu.isa) or 'unknown'}")
        return None
    if precision == "fp8":
        if unit.kind != "gpu":
            return f"fp8 needs a GPU with compute capability >= 8.9; {where} is a {unit.kind}"
        cc = _cc(profile, unit)
        if any(k.startswith("float8") for k in unit.gemm_flops) or (cc is not None and cc >= _FP8_MIN_CC):
            return None
        return f"fp8 needs compute capability >= 8.9 (or a listed float8 rate); {where} has {cc or 'unknown'}"
    return f"unknown precision {precision!r}"


def layer_precision_reason(precision: str, kind: str, module_class: str, *, tied_to: str | None = None) -> str | None:
    """Why a layer of ``kind`` cannot take ``precision`` anywhere (None: it can on some device)."""
    fmt = PRECISION_FORMAT[precision]
    if fmt is None:
        return None
    if kind == "conv":
        return "runtime.kernels has no quantized conv kernel (QuantizedLinear only); use a float precision"
    if kind == "embedding":
        return "runtime.kernels has no quantized embedding (QuantizedLinear only); use a float precision"
    if module_class not in ("Linear", "Conv1D"):  # Conv1D: a transposed linear, made one by the transform
        return f"QuantizedLinear.from_linear needs an nn.Linear, this is a {module_class}"
    if tied_to is not None:
        return (f"its weight is tied to {tied_to!r}; quantizing it would untie and duplicate the weight "
                "(keep a float precision)")
    return None


def group_size_reason(group_size: int, in_features: int) -> str | None:
    """int4 groups larger than the whole (32-rounded) row are pure zero padding: masked, except the smallest."""
    row = -(-in_features // _INT4_BLOCK) * _INT4_BLOCK
    if group_size <= row or group_size == min(GROUP_SIZES):
        return None
    return f"group {group_size} exceeds in_features {in_features} (rounded to {row}): the group would be mostly padding"


def default_group_size(in_features: int, preferred: int = 128) -> int:
    """The int4 group a layer gets when nothing chose one: ``preferred`` unless it would be masked as mostly
    padding, else the largest valid group below it (``run --weight-format int4``, the least-budget formula)."""
    valid = [g for g in sorted(GROUP_SIZES, reverse=True) if g <= preferred and group_size_reason(g, in_features) is None]
    return valid[0] if valid else min(GROUP_SIZES)


def placement_units(profile: HardwareProfile) -> dict[str, ComputeUnit | None]:
    """Execution-unit kind -> the unit a placement of that kind runs on (first of its kind) or None."""
    out: dict[str, ComputeUnit | None] = {"gpu": None, "cpu": None, "dla": None}
    for unit in profile.units:
        if out.get(unit.kind) is None:
            out[unit.kind] = unit
    return out


def placement_reason(placement: str, profile: HardwareProfile) -> str | None:
    """Why a block cannot take ``placement`` on ``profile`` (None: it can)."""
    exec_kind = placement_kind(placement)
    if placement_units(profile)[exec_kind] is not None:
        return device_reason(placement, profile)  # "gpu:N": the profile needs N + 1 GPUs
    if exec_kind == "gpu":
        return f"profile {profile.name!r} has no GPU unit"
    if exec_kind == "cpu":
        return (f"profile {profile.name!r} lists no CPU compute unit (a GPU-only preset); write a full-system "
                "profile (autosurgeon profile --out) to plan CPU execution")
    return f"profile {profile.name!r} has no DLA unit"


def default_placement(profile: HardwareProfile) -> str:
    """Index 0 of every placement variable: resident on the profile's default unit."""
    kind = profile.default_unit().kind
    return kind if kind in PLACEMENTS else "cpu"


# ---------------------------------------------------------------------------------------------- kernels
def _kernel_rules() -> dict[str, Callable[[ComputeUnit, HardwareProfile], str | None]]:
    """Device facts each known kernel needs (from its ``available()`` in runtime/kernels), as profile rules."""
    def isa(*flags: str) -> Callable[[ComputeUnit, HardwareProfile], str | None]:
        def rule(unit: ComputeUnit, profile: HardwareProfile) -> str | None:
            missing = [f for f in flags if f not in profile.cpu.isa]
            return None if not missing else f"needs CPU ISA {', '.join(missing)} (profile lists {list(profile.cpu.isa)})"
        return rule

    def cc(major: int, minor: int) -> Callable[[ComputeUnit, HardwareProfile], str | None]:
        def rule(unit: ComputeUnit, profile: HardwareProfile) -> str | None:
            have = _cc(profile, unit)
            return None if have is not None and have >= (major, minor) else (
                f"needs compute capability >= {major}.{minor}, {unit.name} has {have or 'unknown'}")
        return rule

    avx512 = ("avx512f", "avx512bw", "avx512vl")
    return {
        "cpu-avx512": isa(*avx512),
        "cpu-avx512-bf16": isa(*avx512, "avx512_bf16"),
        "cpu-avx512-a16": isa(*avx512, "avx512_vnni"),
        "int8-dynamic": lambda u, p: None if _x86_avx2(p) else "needs fbgemm (x86-64 with AVX2)",
        "cuda-int8pack": cc(8, 0),
        "cuda-int4-tinygemm": cc(8, 0),
        "cuda-triton": cc(8, 0),
        "cuda-fp8": cc(8, 9),
    }


def kernel_reason(kernel: str, precision: str, unit: ComputeUnit, profile: HardwareProfile) -> str | None:
    """Why a quantized layer in ``precision`` on ``unit`` cannot use ``kernel`` (None: it can).

    ``"auto"`` is always valid (the runtime picks). A float precision takes only ``"auto"``. DLAs run no
    runtime kernel (on paper), so only ``"auto"`` there.
    """
    from runtime.kernels import get_kernel  # lazy: compiles nothing, touches no device

    if kernel == "auto":
        return None
    fmt = PRECISION_FORMAT[precision]
    if fmt is None:
        return f"precision {precision} is a float dtype; kernels apply to quantized layers only"
    if unit.kind == "dla":
        return "the runtime has no DLA kernels (DLA is on paper); use 'auto'"
    try:
        k = get_kernel(kernel)
    except Exception:  # noqa: BLE001 - JalapenoError from the registry: unknown name
        return f"no runtime kernel is called {kernel!r}"
    if fmt not in k.formats:
        return f"kernel {kernel} reads {', '.join(k.formats)}, not {fmt}"
    dev = "cuda" if unit.kind == "gpu" else "cpu"
    if k.device_type not in ("any", dev):
        return f"kernel {kernel} runs on {k.device_type}, not on {unit.name}"
    if precision == "int8-dynamic" and kernel != "int8-dynamic":
        return "precision int8-dynamic runs only the int8-dynamic kernel"
    if kernel == "int8-dynamic" and precision != "int8-dynamic":
        return "kernel int8-dynamic quantizes activations too; choose precision int8-dynamic for it"
    rule = _kernel_rules().get(kernel)
    return rule(unit, profile) if rule is not None else None


def kernel_names() -> tuple[str, ...]:
    """``"auto"`` then every registered runtime kernel, in registration order (the kernel knob's choices)."""

    return ("auto", *(k.name for k in all_kernels()))


__all__ = [
    "FLOAT_PRECISIONS", "PRECISIONS", "PRECISION_BITS", "PRECISION_FORMAT", "default_placement", "group_size_reason",
    "kernel_names", "kernel_reason", "layer_precision_reason", "placement_reason", "placement_units",
    "precision_reason",
]
