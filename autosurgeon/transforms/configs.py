"""The transformation configs: small frozen records, validated on construction.

A config says *what* to do to one module (its FQN is given separately), never holds tensors, and is
checked in ``__post_init__`` so a bad value fails where it is written, not halfway through surgery.
Each config type has exactly one handler (``registry.register_transform``).
"""
from __future__ import annotations

from dataclasses import dataclass

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import DEVICE_PLACEMENT_RE, KERNEL_AUTO, LAYOUTS, PLACEMENTS, PRECISIONS

FUSION_KINDS: tuple[str, ...] = ("conv-bn", "linear-act", "qkv", "gate-up")
PRUNE_METHODS: tuple[str, ...] = ("l2",)


@dataclass(frozen=True)
class QuantizeConfig:
    """Store a linear/conv/embedding's weights at ``precision``.

    Attributes:
        precision: a precision of ``autosurgeon.knobs.PRECISIONS``. Float precisions cast (the module's
            inputs are cast in and its outputs cast back, so neighbours keep their dtype); ``int8``/``int4``/
            ``fp8`` replace an ``nn.Linear`` by ``runtime.kernels.QuantizedLinear``; ``int8-dynamic`` is
            int8 weights with fbgemm's activation-quantizing kernel.
        group_size: int4 group size along K (a positive multiple of 32; ignored by other precisions).
        kernel: a runtime kernel name, or None / ``"auto"`` for the runtime's default on the device.
    """

    precision: str
    group_size: int = 128
    kernel: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0 \
                or self.group_size % 32:
            raise InvalidArgumentError(
                f"`group_size` must be a positive multiple of 32 (e.g. 32, 64, 128, 256), got {self.group_size!r}.")
        if self.kernel is not None and (not isinstance(self.kernel, str) or not self.kernel):
            raise InvalidArgumentError(f"`kernel` must be None, {KERNEL_AUTO!r} or a kernel name, got {self.kernel!r}.")


@dataclass(frozen=True)
class FuseConfig:
    """Fuse a group of modules into one.

    Attributes:
        kind: ``"conv-bn"`` (fold an eval-mode BatchNorm into the conv before it; target: the conv),
            ``"qkv"`` (one linear for q/k/v; target: the attention module), ``"gate-up"`` (one linear for
            gate/up; target: the MLP module), ``"linear-act"`` (a linear and the activation after it in an
            ``nn.Sequential``; target: the linear).
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in FUSION_KINDS:
            raise InvalidArgumentError(f"`kind` must be one of {', '.join(FUSION_KINDS)}, got {self.kind!r}.")


@dataclass(frozen=True)
class PlaceConfig:
    """Where a block runs and where its weights live: ``EXEC<-HOME`` (``autosurgeon.knobs.PLACEMENTS``)."""

    placement: str

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS and not DEVICE_PLACEMENT_RE.fullmatch(str(self.placement)):
            raise InvalidArgumentError(
                f"`placement` must be one of {', '.join(PLACEMENTS)} or 'gpu:N[<-cpu|<-disk]', got {self.placement!r}.")


@dataclass(frozen=True)
class KernelConfig:
    """The kernel a quantized linear runs: a runtime kernel name, or ``"auto"`` (the runtime's default)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"`name` must be {KERNEL_AUTO!r} or a runtime kernel name, got {self.name!r}.")


@dataclass(frozen=True)
class LayoutConfig:
    """Memory layout: ``"channels_last"`` for a Conv2d, ``"packed"`` for a streamed block, or ``"default"``."""

    layout: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InvalidArgumentError(f"`layout` must be one of {', '.join(LAYOUTS)}, got {self.layout!r}.")


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning of an MLP's intermediate channels.

    Channel ``j`` of a Llama-style MLP is row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of
    ``down_proj``; its score is the L2 norm of those three vectors together (``method="l2"``). The
    ``round(ratio * n)`` lowest-scoring channels are removed (at least one is kept), the rest keep their
    order. Not a knob of the search space yet.

    Attributes:
        ratio: fraction of intermediate channels removed, in [0, 1).
        method: channel score; only ``"l2"``.
    """

    ratio: float
    method: str = "l2"

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise InvalidArgumentError(f"`ratio` must be a number in [0, 1) (fraction of channels removed), "
                                       f"got {self.ratio!r}.")
        if self.method not in PRUNE_METHODS:
            raise InvalidArgumentError(f"`method` must be one of {', '.join(PRUNE_METHODS)}, got {self.method!r}.")


__all__ = ["FUSION_KINDS", "FuseConfig", "KernelConfig", "LayoutConfig", "PlaceConfig", "PruneConfig",
           "QuantizeConfig"]
