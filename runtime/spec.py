"""What a Session is asked to do: per block, where it runs, where its weights live and in which format.

Plain frozen data, validated on construction, so a spec can be built by hand, by a plan transform, or by
:meth:`SessionSpec.fit` from budgets alone, and checked before the model is touched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from runtime.errors import JalapenoError
from runtime.sizes import parse_bytes
from runtime.streaming import DEFAULT_DISK_IO, DISK_IO
from runtime.tensors import TIERS, tier_of

FLOAT_FORMATS: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
QUANT_FORMATS: tuple[str, ...] = ("int8", "int4")
WEIGHT_FORMATS: tuple[str, ...] = (*FLOAT_FORMATS, *QUANT_FORMATS)


@dataclass(frozen=True)
class BlockSpec:
    """How one block runs.

    Attributes:
        device: execution device, ``"cpu"`` or ``"cuda[:N]"``.
        home: tier holding the weights between uses: ``"gpu"``, ``"cpu"`` or ``"disk"``. ``None`` means the
            execution device's own tier (resident). Any slower tier means the block is streamed.
        weight_format: ``"float32"``/``"bfloat16"``/``"float16"`` (cast), or ``"int8"``/``"int4"`` (weight-only
            quantized linears via ``runtime.kernels.QuantizedLinear``; other tensors keep the float dtype).
            ``None`` keeps the model's weights as they are.
        group_size: int4 group size.
    """

    device: str = "cpu"
    home: str | None = None
    weight_format: str | None = None
    group_size: int = 128

    def __post_init__(self) -> None:
        try:
            tier = tier_of(self.device)
        except (RuntimeError, JalapenoError):
            raise JalapenoError(f"`device` must be 'cpu' or 'cuda[:N]', got {self.device!r}.") from None
        if self.home is not None and self.home not in TIERS:
            raise JalapenoError(f"`home` must be one of {', '.join(TIERS)} or None, got {self.home!r}.")
        if tier == "cpu" and self.home == "gpu":
            raise JalapenoError(f"a block executed on 'cpu' cannot have its home on 'gpu'; use home='cpu' or 'disk'.")
        if self.weight_format is not None and self.weight_format not in WEIGHT_FORMATS:
            raise JalapenoError(
                f"`weight_format` must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weight_format!r}.")
        if self.group_size < 1:
            raise JalapenoError(f"`group_size` must be >= 1, got {self.group_size}.")

    @property
    def tier(self) -> str:
        """The home tier, with ``None`` resolved to the execution device's tier."""
        return self.home or tier_of(self.device)

    @property
    def streamed(self) -> bool:
        return self.tier != tier_of(self.device)


@dataclass(frozen=True)
class SessionSpec:
    """Per-block placement and format, the non-block modules' placement, tier budgets and streaming knobs.

    Attributes:
        blocks: one BlockSpec per block, in order; empty means ``default`` for every block.
        default: the BlockSpec of blocks not listed in ``blocks``.
        rest: the modules outside the blocks (embeddings, final norm, head): resident on ``rest.device``;
            its ``weight_format`` only casts floats (the head is never quantized here).
        budgets: tier -> bytes (ints or strings like ``"3GiB"``); a missing tier is unbounded.
        lookahead: streamed units in flight beyond the one running.
        granularity: ``"module"`` streams each weight-owning submodule of a block separately (small
            staging slots: a block's seven linears need slots of the largest one only); ``"block"`` streams
            whole blocks (fewer, larger transfers).
        block_path: dotted path of the ``nn.ModuleList`` of blocks (``"model.layers"``); ``None`` picks the
            ModuleList holding the most parameters.
        offload_dir: directory for disk-tier files (``None``: a temporary directory removed on close).
        disk_io: how disk-tier units reach the host (default ``"mmap-populate"``): ``"mmap"`` (mapped once, pages
            populated ahead on a worker and dropped after use; no copy), ``"mmap-populate"`` (the same, but a unit
            already in the page cache is populated on the compute thread right before it runs, no handoff),
            ``"mmap-auto"`` (such a unit is left to the GEMM's faults), ``"mmap-willneed"``, ``"mmap-sync"``,
            ``"remap"`` (a fresh mapping per use) or ``"read"`` (copied into staging slots); see
            :class:`~runtime.streaming.Streamer`.
        huge_pages: the persistent-mapping modes map disk-tier files with huge pages where the kernel has them
            (:mod:`runtime.mapped`: one page-table entry per 2 MiB instead of per 4 KiB at each populate);
            ``False`` keeps 4 KiB pages.
        keep_bound: a persistently mapped unit stays bound to its mapped views between uses (no tensor swap per
            use; its pages are still dropped after each); ``False`` swaps meta placeholders in after each use
            (:class:`~runtime.streaming.Streamer`).
        modules: per-module overrides for modules outside the blocks, keyed by name (e.g. run
            ``"model.embed_tokens"`` on the host next to GPU blocks: a lookup needs one row, not the table
            on the GPU). Inputs are moved to the module's device and outputs back to ``rest.device``.
    """

    blocks: tuple[BlockSpec, ...] = ()
    default: BlockSpec = field(default_factory=BlockSpec)
    rest: BlockSpec | None = None
    budgets: Mapping[str, int | str | None] = field(default_factory=dict)
    lookahead: int = 2
    granularity: str = "module"
    block_path: str | None = None
    offload_dir: str | None = None
    modules: Mapping[str, BlockSpec] = field(default_factory=dict)
    disk_io: str = DEFAULT_DISK_IO
    huge_pages: bool = True
    keep_bound: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        parsed = {}
        for tier, value in dict(self.budgets).items():
            if tier not in TIERS:
                raise JalapenoError(f"budget tier {tier!r} is unknown; use one of {', '.join(TIERS)}.")
            parsed[tier] = None if value is None else parse_bytes(value, what=f"budgets[{tier!r}]")
        object.__setattr__(self, "budgets", parsed)
        if self.lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {self.lookahead}.")
        if self.disk_io not in DISK_IO:
            raise JalapenoError(f"`disk_io` must be one of {', '.join(map(repr, DISK_IO))}, got {self.disk_io!r}.")
        if self.granularity not in ("module", "block"):
            raise JalapenoError(f"`granularity` must be 'module' or 'block', got {self.granularity!r}.")
        for name, bs in [("rest", self.rest), *dict(self.modules).items()]:
            if bs is not None and bs.streamed:
                raise JalapenoError(f"non-block module spec {name!r} must be resident; give it no slower `home`.")

    def block(self, index: int) -> BlockSpec:
        return self.blocks[index] if index < len(self.blocks) else self.default

    @property
    def rest_spec(self) -> BlockSpec:
        return self.rest or BlockSpec(device=self.default.device, weight_format=self.default.weight_format)

    @classmethod
    def fit(cls, *, n_blocks: int, block_bytes: int, rest_bytes: int, device: str, budgets: Mapping[str, int | str],
            stream_unit_bytes: int | None = None, weight_format: str | None = None, lookahead: int = 2,
            slower_tier: str | None = None, **options: object) -> SessionSpec:
        """Resident blocks first while the execution tier's budget lasts, the rest streamed.

        ``block_bytes``/``rest_bytes`` are the bytes per block and of the non-block modules in the final
        weight format; ``stream_unit_bytes`` the largest streamed unit (a block's largest linear with
        ``granularity="module"``; default ``block_bytes``). The streamed blocks' home is the next slower
        tier with room (``slower_tier`` forces one). Deterministic and simple on purpose: a plan from the
        search decides placement properly; this is the sensible default for ``autosurgeon run``.
        """
        limits = {k: (None if v is None else parse_bytes(v, what=f"budgets[{k!r}]")) for k, v in budgets.items()}
        tier = tier_of(device)
        budget = limits.get(tier)
        unit = stream_unit_bytes or block_bytes
        if budget is None:
            resident = n_blocks
        else:
            room = budget - rest_bytes
            resident = max(0, min(n_blocks, room // max(block_bytes, 1)))
            if resident < n_blocks and unit > 0 and (lookahead + 1) * unit > room:
                # Not even the staging slots fit at this lookahead: prefetch less rather than fail (the
                # store still refuses, naming the budget, if one slot does not fit).
                lookahead = max(0, room // unit - 1)
            # Streaming anything costs (lookahead + 1) slots: make room for them if we stream at all.
            while resident < n_blocks and resident > 0 and room - resident * block_bytes < (lookahead + 1) * unit:
                resident -= 1
        if slower_tier is None:
            slower_tier = "cpu" if tier == "gpu" else "disk"
        if tier == "gpu" and slower_tier == "cpu":
            cpu_budget = limits.get("cpu")
            if cpu_budget is not None and (n_blocks - resident) * block_bytes > cpu_budget:
                slower_tier = "disk"
        blocks = tuple(
            BlockSpec(device=device, home=None if i < resident else slower_tier, weight_format=weight_format)
            for i in range(n_blocks)
        )
        rest = BlockSpec(device=device, weight_format=weight_format if weight_format in FLOAT_FORMATS else None)
        return cls(blocks=blocks, default=blocks[-1] if blocks else BlockSpec(device=device), rest=rest,
                   budgets=limits, lookahead=lookahead, **options)  # type: ignore[arg-type]
