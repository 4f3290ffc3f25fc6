"""Analytic cost of a plan from a HardwareProfile alone: roofline per unit + transfers + overlap + launches.

Per leaf (analysis of one step: a decode token, or one sample), on its block's execution unit ``U``::

    compute_s = flops / U.peak_flops(compute_dtype(precision))
    memory_s  = (weight_bytes(precision) + activation_bytes) / U.memory_bandwidth
    leaf_s    = max(compute_s, memory_s)

``weight_bytes`` comes from ``autosurgeon.cost.footprint`` for the chosen precision and group size (the bytes
the runtime stores and a kernel reads); an embedding reads only its gathered rows (the analysis'
``weight_read_bytes``, scaled by the itemsize of the chosen float precision); leaves without a precision
(norms, attention cores) read what the analysis says. ``activation_bytes`` is the analysis' memory
traffic minus the weight read (activations in/out and KV cache reads). Elementwise ops between leaves
(residual adds, rotary) carry no FLOPs in torch's counter; their cost is in the launch term.

On a measured CPU (``gemv=`` a ``cost.gemv.GemvTable`` at the phase's token rows): a linear leaf's seconds are
instead the MEASURED time of its format and kernel at its own ``rows x in -> out`` shape (small decode GEMVs are bound by kernel
and dispatch work, not bytes: a roofline ranked int4 fastest where it is slowest), and the launch term uses the
table's measured per-op cost unless one is passed, over the step's ops less those the table's linears dispatch.
With ``rest_s`` (``cost.step_rest``: the unmodified step with its linears nulled, measured on the runtime) that
measured rest replaces the launch term and every non-linear leaf on the unit it ran on (it holds them: no plan
changes them; on a measured CPU with a GEMV table, or a measured GPU with dispatch costs);
with ``stream`` (``Profiler.stream_costs``) a streamed block adds its measured exposed cost, ``fetches x fetch_s +
bytes x s_per_byte``, to its compute instead of the link roofline and the assumed per-fetch cost.

A block's ``C_b`` is the sum of its leaves (in a streamed block, plus a repack of every weight whose kernel
keeps a packed copy, since the copy is rebuilt after each fetch: the GEMV table's measured packing time where it
has the leaf, else ``footprint.packed_copy_bytes`` read and written once at memory bandwidth); streaming and overlap follow ``cost.pipeline_latency``; the
step adds ``n_ops x launch_overhead_s`` (ops counted once with a dispatch mode: eager PyTorch pays one
dispatch/launch per op, which dominates small models and batch-1 decode on GPUs).

On a GPU the profile measured (``HardwareProfile.dispatch``, ``hardware.dispatch``): the per-op cost is the measured
``op_s``, the step adds the measured ``step_s`` (its closing synchronise) once, and a linear leaf costs at least its
format and kernel's measured per-call floor (``max(roofline, floor)``; the floors' own ops leave the launch term), so
a plan whose formats dispatch more ops per call (int8 / int4 / fp8 eager paths) is priced slower, as the runtime's
eager step is. Without that record (paper profiles): the documented ``DEFAULT_LAUNCH_OVERHEAD_S``, as before.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autosurgeon.cost.base import (
    DEFAULT_FETCH_OVERHEAD_S,
    DEFAULT_LAUNCH_OVERHEAD_S,
    LeafChoice,
    block_stream,
    compute_dtype,
    disk_is_warm,
    pipeline_latency,
    resolve_blocks,
    transfer_seconds_per_byte,
)
from autosurgeon.cost.footprint import FLOAT_ITEMSIZE, packed_copy_bytes, weight_bytes
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.dispatch import dispatch_costs
from autosurgeon.hardware.power_cap import mode_key
from autosurgeon.space.masks import placement_units

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.space.search_space import SearchSpace


def leaf_rows(leaf: Any, info: Any, batch: int) -> int:
    """Rows one call of a linear leaf multiplies: its FLOPs over 2 x its weights (``batch`` where unknown)."""
    if info.flops and leaf.weight_numel:
        return max(1, round(info.flops / (2 * leaf.weight_numel)))
    return batch


class AnalyticCostModel:
    """Latency of a plan on a profile, on paper (module docstring: formulas).

    Args:
        space: the model's SearchSpace on ``profile``.
        analysis: ``ModelAnalysis`` of ONE step of the workload (decode phase for LMs, one sample otherwise).
        profile: the HardwareProfile.
        n_ops: aten ops per step (``cost.count_ops``).
        launch_overhead_s: seconds per op; None: ``DEFAULT_LAUNCH_OVERHEAD_S`` of the default unit's kind.
        fetch_overhead_s: seconds per streamed fetch; None: ``DEFAULT_FETCH_OVERHEAD_S`` per execution kind.
        lookahead: prefetch lookahead of the runtime (0 disables overlap).
        disk_cache: "auto" | "warm" | "cold" (``cost.disk_is_warm``).
    """

    def __init__(self, space: SearchSpace, analysis: Any, profile: HardwareProfile, *, n_ops: int,
                 launch_overhead_s: float | None = None, fetch_overhead_s: float | None = None,
                 lookahead: int = 2, disk_cache: str = "auto", gemv: Any = None, batch: int = 1,
                 rest_s: float | None = None, stream: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if n_ops < 0:
            raise InvalidArgumentError(f"`n_ops` must be >= 0, got {n_ops}.")
        default_kind = profile.default_unit().kind
        gpu_dispatch = default_kind != "cpu" and dispatch_costs(profile, profile.default_unit().name) is not None
        if rest_s is not None and ((gemv is None and not gpu_dispatch) or not rest_s >= 0):
            raise InvalidArgumentError(f"`rest_s` must be >= 0 seconds and comes with a `gemv` table (or a GPU "
                                       f"profile's dispatch costs); got {rest_s!r} with "
                                       f"gemv={'a table' if gemv is not None else None}.")
        for name, value in (("launch_overhead_s", launch_overhead_s), ("fetch_overhead_s", fetch_overhead_s)):
            if value is not None and not value >= 0:
                raise InvalidArgumentError(f"`{name}` must be >= 0 seconds or None, got {value!r}.")
        self.space, self.profile, self.n_ops = space, profile, n_ops
        self.info = {u.name: u for u in analysis.leaves}
        missing = [n for n in space.leaves if n not in self.info]
        if missing:
            raise InvalidArgumentError(f"`analysis` lacks leaves {missing[:3]} of the space; analyse the same model.")
        self.units = {k: u for k, u in placement_units(profile).items() if u is not None}
        self.gemv, self.batch = gemv, batch
        # Token rows each linear multiplies in this step (its FLOPs / 2 x weights: batch x 1 at decode, the tokens or
        # patches of a forward otherwise), the GEMV table's row count for it.
        self.rows = {n: leaf_rows(leaf, self.info[n], batch) for n, leaf in space.leaves.items() if leaf.kind == "linear"}
        # A GPU the profile measured: its eager per-op, per-step and per-linear-call costs (hardware/dispatch.py).
        self.dispatch = {kind: d for kind, unit in self.units.items() if kind != "cpu"
                         for d in [dispatch_costs(profile, unit.name)] if d is not None}
        step_dispatch = self.dispatch.get(default_kind)
        if launch_overhead_s is None and gemv is not None and gemv.launch_s > 0:
            launch_overhead_s = gemv.launch_s
        if launch_overhead_s is None and step_dispatch is not None:
            launch_overhead_s = step_dispatch.op_s
        self.launch_overhead_s = (DEFAULT_LAUNCH_OVERHEAD_S.get(default_kind, 0.0)
                                  if launch_overhead_s is None else launch_overhead_s)
        self.step_fixed_s = step_dispatch.step_s if step_dispatch is not None else 0.0
        self.fetch_overhead_s = fetch_overhead_s
        self.lookahead, self.disk_cache = lookahead, disk_cache
        self._leaf_cache: dict[tuple[Any, ...], tuple[float, float]] = {}
        # A table-priced linear's seconds include the ops its call dispatches: those leave the launch term.
        self.launched_ops = n_ops - (self._table_linear_ops() if gemv is not None else
                                     self._dispatch_linear_ops(step_dispatch) if step_dispatch is not None else 0)
        self.rest_s = rest_s
        self.rest_kind = default_kind  # the unit the rest was measured on (its non-linear leaves are in it)
        # Measured exposed streaming cost per placement (``Profiler.stream_costs``: per fetch + per byte, overlap
        # as the runtime achieves it included): replaces the link roofline and the assumed fetch cost there.
        self.stream = {k: {"fetch_s": float(v["fetch_s"]), "s_per_byte": float(v["s_per_byte"])}
                       for k, v in (stream or {}).items()}

    def _table_linear_ops(self) -> int:
        """Aten ops the unmodified model's linears dispatch, per the table (linears it lacks: 0)."""
        total = 0
        for leaf in self.space.leaves.values():
            if leaf.kind != "linear" or not leaf.out_features or not self.info[leaf.name].flops:
                continue  # a linear the pass did not call (no FLOPs in the analysis) is not in ``n_ops`` either
            try:
                ops = self.gemv.ops(leaf.dtype or "float32", "auto", leaf.weight_numel // leaf.out_features,
                                    leaf.out_features, self.rows[leaf.name])
            except KeyError:
                ops = None
            total += ops or 0
        return min(total, self.n_ops)

    def _dispatch_linear_ops(self, dispatch: Any) -> int:
        """Aten ops the unmodified model's linears dispatch, per the profile's linear floors (their own ops leave the
        launch term: a floor's seconds include them)."""
        total = 0
        for leaf in self.space.leaves.values():
            if leaf.kind != "linear" or not leaf.out_features or not self.info[leaf.name].flops:
                continue
            floor = dispatch.floor(leaf.dtype or "float32", "auto")
            total += int(floor["ops"]) if floor is not None else 0
        return min(total, self.n_ops)

    def _dispatch_floor(self, choice: LeafChoice, exec_kind: str) -> float | None:
        """The measured per-call floor of a linear leaf's format and kernel on a GPU the profile measured (None:
        no record, not a linear, or a linear the pass does not call)."""
        dispatch, leaf = self.dispatch.get(exec_kind), choice.leaf
        if dispatch is None or leaf.kind != "linear" or not leaf.out_features or not self.info[leaf.name].flops:
            return None
        precision = choice.precision if choice.chosen else (leaf.dtype or "float32")
        floor = dispatch.floor(precision, choice.kernel if choice.chosen else "auto")
        return None if floor is None else float(floor["s"])

    def _unit(self, kind: str) -> Any:
        unit = self.units.get(kind)
        if unit is None:
            raise InvalidArgumentError(f"profile {self.profile.name!r} has no {kind} unit for this placement.")
        return unit

    def leaf_seconds(self, choice: LeafChoice, exec_kind: str) -> tuple[float, float]:
        """``(roofline seconds, compute seconds)`` of one leaf under its choice on the ``exec_kind`` unit."""
        # The kernel is part of the key: without it, the first kernel priced for a leaf's format stood for every
        # other (tiny-llama: random plans' named kernels priced as "auto", or "auto" as a dequant kernel 5x slower).
        key = (choice.leaf.name, choice.precision, choice.group_size, choice.kernel, choice.chosen, exec_kind)
        hit = self._leaf_cache.get(key)
        if hit is not None:
            return hit
        leaf = choice.leaf
        self._unit(exec_kind)  # a placement the profile lacks fails here, naming it
        if self.rest_s is not None and exec_kind == self.rest_kind and leaf.kind != "linear":
            # In the measured rest of the step (cost.step_rest) at the model's own dtype: a plan that changes the
            # leaf's precision (a conv, an embedding) adds only the roofline's difference.
            out = (0.0, 0.0)
            if choice.chosen and choice.precision != (leaf.dtype or "float32"):
                mine = self._roofline(choice, exec_kind)
                own = self._roofline(LeafChoice(leaf, leaf.dtype or "float32", choice.group_size, "auto", False),
                                     exec_kind)
                out = (mine[0] - own[0], mine[1] - own[1])
            self._leaf_cache[key] = out
            return out
        if self.gemv is not None and exec_kind == "cpu" and leaf.kind == "linear" and leaf.out_features:
            precision = choice.precision if choice.chosen else (leaf.dtype or "float32")
            try:
                seconds = self.gemv.seconds(precision, choice.kernel if choice.chosen else "auto",
                                            leaf.weight_numel // leaf.out_features, leaf.out_features,
                                            self.rows[leaf.name])
            except KeyError:
                seconds = None  # a shape or format the table lacks: the roofline below
            if seconds is not None:
                self._leaf_cache[key] = (seconds, seconds)
                return seconds, seconds
        out = self._roofline(choice, exec_kind)
        floor = self._dispatch_floor(choice, exec_kind)
        if floor is not None:  # eager on a GPU: a call costs at least its format's host dispatch + launches
            out = (max(out[0], floor), out[1])
        self._leaf_cache[key] = out
        return out

    def _roofline(self, choice: LeafChoice, exec_kind: str) -> tuple[float, float]:
        leaf, info, unit = choice.leaf, self.info[choice.leaf.name], self._unit(exec_kind)
        if choice.chosen and leaf.weight_numel and leaf.kind != "embedding":
            wbytes = weight_bytes(leaf.weight_numel, leaf.out_features, choice.precision, choice.group_size,
                                  bias=leaf.bias) + sum(leaf.other_sizes)
        elif choice.chosen and leaf.kind == "embedding" and leaf.dtype in FLOAT_ITEMSIZE:
            wbytes = int(info.weight_read_bytes * FLOAT_ITEMSIZE.get(choice.precision, 4) / FLOAT_ITEMSIZE[leaf.dtype])
        else:
            wbytes = info.weight_read_bytes
        activation = max(0, info.memory_bytes - info.weight_read_bytes)
        dtype = compute_dtype(choice.precision) if choice.chosen else (leaf.dtype or "float32")
        peak = unit.peak_flops(dtype) or unit.peak_flops("float16")
        compute = info.flops / peak if info.flops and peak > 0 else 0.0
        memory = (wbytes + activation) / unit.memory_bandwidth if unit.memory_bandwidth > 0 else 0.0
        return max(compute, memory), compute

    def _as_run(self, choice: LeafChoice, block: Any) -> LeafChoice:
        """``choice`` with the kernel the runtime runs it with: a streamed weight-only layer left at "auto" on a GPU
        whose default kernel packs runs the unpacked kernel the profile recorded (``dispatch.streamed_kernels``;
        the Streamer's ``use_unpacked_kernels``), so it costs that kernel's floor and repacks nothing."""
        dispatch = self.dispatch.get(block.exec_kind)
        if dispatch is None or not block.streamed or not choice.chosen or choice.kernel != "auto":
            return choice
        kernel = dispatch.streamed_kernels.get(choice.precision)
        return choice if kernel is None else dataclasses.replace(choice, kernel=kernel)

    def _repack_seconds(self, block: Any, leaves: Any = None) -> float:
        """Seconds a streamed block's packing kernels spend packing again after each fetch: the GEMV table's
        measured ``prepare_s`` where it has the leaf (cost.gemv), else the packed bytes read and written once at
        memory bandwidth (a floor: fbgemm's prepack measured 50-100x that)."""
        unit = self._unit(block.exec_kind)
        total, measured = 0, 0.0
        for c in (block.leaves if leaves is None else leaves):
            if c.chosen and c.leaf.weight_numel and c.precision not in FLOAT_ITEMSIZE:
                prepare = self._measured_prepare(c, block.exec_kind)
                if prepare is not None:
                    measured += prepare
                    continue
                total += packed_copy_bytes(c.leaf.weight_numel, c.leaf.out_features, c.precision, c.group_size,
                                           kernel=c.kernel, exec_kind=block.exec_kind)
        return measured + (2.0 * total / unit.memory_bandwidth if unit.memory_bandwidth > 0 else 0.0)

    def _measured_prepare(self, choice: LeafChoice, exec_kind: str) -> float | None:
        """The GEMV table's packing seconds of ``choice`` (0.0: its kernel does not pack); None: not in a table."""
        leaf = choice.leaf
        if self.gemv is None or exec_kind != "cpu" or leaf.kind != "linear" or not leaf.out_features:
            return None
        try:
            value = self.gemv.prepare_seconds(choice.precision, choice.kernel, leaf.weight_numel // leaf.out_features,
                                              leaf.out_features, self.rows[leaf.name])
        except KeyError:
            return None
        return 0.0 if value is None else value

    def breakdown(self, x: Any) -> dict[str, Any]:
        """Latency and its parts for vector ``x``: ``latency_s``, ``busy_s``, ``compute_s``, ``transfer_s``,
        ``fetch_s``, ``overhead_s``, ``streamed_bytes``, ``warm_disk``, ``link_notes``, ``blocks``."""
        blocks = resolve_blocks(self.space, x)
        disk_bytes = sum(block_stream(b)[0] for b in blocks if b.home == "disk")
        warm = disk_is_warm(self.profile, disk_bytes, self.disk_cache)
        steps, rows, notes = [], [], set()
        busy = compute_total = transfer_total = fetch_total = 0.0
        streamed_bytes = 0
        for block in blocks:
            leaves = [self._as_run(c, block) for c in block.leaves]
            c_b = sum(self.leaf_seconds(c, block.exec_kind)[0] for c in leaves)
            if block.streamed:
                c_b += self._repack_seconds(block, leaves)
            busy += c_b
            compute_total += c_b
            x_b = f_b = 0.0
            measured = self.stream.get(block.placement) if block.streamed else None
            if measured is not None:
                nbytes, fetches = block_stream(block)
                x_b, f_b = nbytes * measured["s_per_byte"], fetches * measured["fetch_s"]
                notes.add(f"{block.placement} measured {measured['fetch_s'] * 1e6:.0f} us/fetch + "
                          f"{measured['s_per_byte'] * 1e9:.3f} ns/byte exposed")
                streamed_bytes += nbytes
            elif block.streamed:
                nbytes, fetches = block_stream(block)
                per_byte, note = transfer_seconds_per_byte(self.profile, self._unit(block.exec_kind), block.home,
                                                           warm_disk=warm)
                notes.add(note)
                x_b = nbytes * per_byte
                fetch = (DEFAULT_FETCH_OVERHEAD_S.get(block.exec_kind, 0.0) if self.fetch_overhead_s is None
                         else self.fetch_overhead_s)
                f_b = fetches * fetch
                streamed_bytes += nbytes
            transfer_total += x_b
            fetch_total += f_b
            # A measured exposed cost adds to the compute (the overlap is in the measurement).
            steps.append((c_b + x_b + f_b, 0.0, 0.0, False) if measured is not None else (c_b, x_b, f_b, block.streamed))
            rows.append({"name": block.name, "placement": block.placement, "compute_s": c_b, "transfer_s": x_b,
                         "fetch_s": f_b})
        overhead = (self.launched_ops * self.launch_overhead_s + self.step_fixed_s if self.rest_s is None
                    else self.rest_s)
        latency = overhead + pipeline_latency(steps, lookahead=self.lookahead)
        return {"latency_s": latency, "busy_s": busy, "compute_s": compute_total, "transfer_s": transfer_total,
                "fetch_s": fetch_total, "overhead_s": overhead, "streamed_bytes": streamed_bytes, "warm_disk": warm,
                "link_notes": sorted(n for n in notes if n), "blocks": rows}

    def settings(self) -> Mapping[str, Any]:
        """What besides the plan changes this model's result (part of the evaluator's cache key). A profile
        moved to another power mode (``power.at_power_cap``) keeps its fingerprint but not its rates, so its
        mode is named here; a profile in its reference mode adds nothing (keys as before power modes)."""

        out: dict[str, Any] = {"n_ops": self.n_ops, "launch_overhead_s": self.launch_overhead_s,
                               "fetch_overhead_s": self.fetch_overhead_s, "lookahead": self.lookahead,
                               "disk_cache": self.disk_cache}
        if self.rest_s is not None:
            out["rest_s"] = self.rest_s
        if self.stream:
            out["stream"] = self.stream
        if self.gemv is not None:  # measured rates change results: the table's identity keys the cache
            out["gemv"] = [self.gemv.device, self.gemv.threads, self.gemv.measured_at, self.batch]
        if self.dispatch:  # measured dispatch costs change results
            out["dispatch"] = {k: [d.op_s, d.step_s, sorted((n, e["s"]) for n, e in d.linear.items())]
                               for k, d in self.dispatch.items()}
        mode = mode_key(self.profile)
        if mode is not None:
            out["power_mode"] = mode
        return out


__all__ = ["AnalyticCostModel", "leaf_rows"]
