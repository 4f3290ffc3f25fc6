"""Measured cost of a plan: per-unit times taken once on the runtime, cached on disk, composed per plan.

What is measured (each with warm-up, repeats and the median; wall clock through
``runtime.telemetry.measure_latency``, or the process CPU clock on shared CPU machines: ``TimingSettings``):

* **unit times** — every linear/conv/embedding leaf, per (precision, group size, kernel, execution unit),
  as the real module the runtime would run (``runtime.kernels.QuantizedLinear`` with that kernel for
  int8/int4/int8-dynamic, the layer cast to bf16/fp16 behind an input/output cast for float precisions).
  Default (``TimingSettings.mode="context"``): inside real forward passes of the model, with that choice
  on every leaf that can take it, timed by forward pre/post hooks around each leaf (one pass per choice
  times all leaves: the caches and dispatch are those of a real pass). ``mode="isolated"``: the leaf
  alone in a loop on the input captured from a forward pass (pre-hook); leaves of one shape then share an
  entry. Measured on tiny-llama here, isolated loops read the weights hot from L2 and underestimate
  what the same leaf costs inside a pass; context timing is what the composition needs. In a streamed
  block a kernel that packs its weight (fbgemm, tinygemm) repacks after each fetch: that repack (isolated,
  pack + call minus call) is added.
* **fixed overhead** per step — the unmodified model's step on the runtime (``runtime.Session``, all
  resident on the default unit) minus the sum of its precision leaves' times at their own dtype: what no
  plan variable changes (norms, attention cores, elementwise ops, Python and dispatch).
* **streaming** per streamed placement (``cpu<-disk``, ``gpu<-cpu`` ...) — the same step with every block
  streamed from that home, against resident, at four weight formats (four byte counts, same fetches); a
  least-squares line through the exposed costs gives a per-fetch cost and a per-byte cost, i.e. the link as the
  runtime sees it (overlap with compute already inside), with fetches and bytes counted by the Streamer.

Composition per plan and phase: ``T = overhead + sum_leaves t(leaf choice) + sum_streamed_blocks
(n_fetch x fetch_s + bytes x s_per_byte)``. A step is one decode token at ``context`` positions (causal
LMs; plus one prefill of ``context`` tokens) or one forward of ``batch`` samples.

The table is cached as JSON under ``<cache>/profiled/<key>.json``; the key hashes the model's architecture
fingerprint, the device fingerprint, the workload, the timing settings, torch's version and thread count.

Robustness (MEASURING.md, ``cost/dispersion.py``): every entry keeps its spread (IQR/median of its repeats);
an entry above ``NOISY`` is re-measured once and, if it stays, labelled noisy in ``table.noisy`` (the
evaluator's method says how many); the load average is recorded with the table. On load, a cheap spot check
re-times the unmodified step: a cached table slower than now by more than ``STALE`` (measured under load,
or stale) or mostly noisy is re-measured, not trusted; one faster than now is kept (the machine is loaded
NOW) and the check is recorded. On first use (``compose``) the table is re-validated against the machine's
present state (``cost/profiled_drift.py``): the unmodified step timed now against the table's own figure for it,
and outside a band every time term scaled by that factor, said in the estimate's method. A fresh table's baseline step and its choices' context runs are timed in interleaved
rounds (``TimingSettings.rounds``, ``cost/profiled_context.py``), so a load change moves them all alike.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.cost.base import LeafChoice, block_stream, count_ops, default_group, resolve_blocks
from autosurgeon.cost.dispersion import NOISY, iqr_ratio, load_average, timed_samples
from autosurgeon.cost.profiled_drift import describe as describe_drift, revalidate as revalidate_table
from autosurgeon.cost.profiled_trust import trust_table
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.cache import cache_root
from autosurgeon.plan import model_fingerprint
from autosurgeon.space.masks import FLOAT_PRECISIONS, placement_units
from autosurgeon.transforms.place import block_path
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec

logger = get_logger(__name__)

STREAM_FORMATS = ("float32", "bfloat16", "int8", "int4")  # weight formats of the streaming probe


from autosurgeon.cost.profiled_context import context_times, measure_in_rounds, store_context
from autosurgeon.cost.profiled_kv import measure_kv_op_seconds
from autosurgeon.cost.profiled_table import (  # noqa: F401  (re-exported)
    FLOAT_DTYPES,
    MAX_COPIES,
    TABLE_TYPE,
    TABLE_VERSION,
    ProfiledTable,
    TimingSettings,
    _exec_device,
    _FloatUnit,
    _packs,
    signature,
    variant,
)
from autosurgeon.cost.workload import (  # noqa: F401  (re-exported: the workload moved there)
    Workload,
    _cache_kw,
    base_inputs,
    make_steps,
    no_grad_forward,
    timed,
)

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import LoadedModel


class Profiler:
    """Measures and holds a :class:`ProfiledTable` for one model, space and workload; see the module docstring.

    Args:
        loaded: a zoo ``LoadedModel`` (its module is deep-copied for every runtime measurement, never changed).
        space: the model's SearchSpace on ``profile``.
        profile: the HardwareProfile of THIS machine (its units are where the timings run).
        workload: what a step is.
        timing: warm-up and repeats.
        cache_dir: cache root (default ``$AUTOSURGEON_CACHE`` or ``~/.cache/autosurgeon``).
        use_cache: read and write ``<cache>/profiled/<key>.json``.
        revalidate: on first use (``compose``) time the unmodified step now and, outside
            ``profiled_drift.DRIFT_BAND`` of the table's own figure, scale every time term by now / table
            (``cost/profiled_drift.py``; recorded in ``table.checks`` and in ``drift``).
    """

    def __init__(self, loaded: LoadedModel, space: SearchSpace, profile: HardwareProfile, workload: Workload, *,
                 timing: TimingSettings | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 use_cache: bool = True, revalidate: bool = True) -> None:
        self.loaded, self.module = loaded, loaded.model
        self.revalidate_on_use = revalidate
        self.load_check: dict[str, Any] | None = None  # the spot check made when a cached table was loaded
        self.drift: dict[str, Any] | None = None  # the re-validation made on first use (profiled_drift)
        self.fresh_at: float | None = None  # time.time() when this profiler last measured the table's base
        self.space, self.profile, self.workload = space, profile, workload
        self.timing = timing or TimingSettings()
        self.use_cache = use_cache
        self.units = {k: u for k, u in placement_units(profile).items() if u is not None}
        settings = {"model": model_fingerprint(self.module), "device": profile.fingerprint,
                    "workload": asdict(workload), "timing": asdict(self.timing), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "version": TABLE_VERSION, "max_copies": MAX_COPIES}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        self.path = cache_root(cache_dir) / "profiled" / f"{key}.json"
        self.table = self._load(key, settings)
        self._inputs: dict[str, dict[str, tuple[tuple[Any, ...], dict[str, Any]]]] | None = None
        self._dirty = False

    def _load(self, key: str, settings: dict[str, Any]) -> ProfiledTable:
        if self.use_cache and self.path.is_file():
            try:
                table = ProfiledTable.from_json(self.path.read_text())
            except InvalidArgumentError as exc:
                logger.warning("ignoring the cached profiled table %s (%s)", self.path, exc)
            else:
                logger.info("profiled table from cache %s (%d unit entries)", self.path, len(table.unit_s))
                if self._trust(table):
                    return table
        return ProfiledTable(key=key, settings={**settings, "load_1m": load_average()})

    def _trust(self, table: ProfiledTable) -> bool:  # the spot check on load: cost/profiled_trust.py

        return trust_table(self, table)

    def save(self) -> Path | None:
        """Write the table if it changed (atomically); returns the path or None."""
        if not (self.use_cache and self._dirty):
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(self.table.to_json())
        os.replace(tmp, self.path)
        self._dirty = False
        return self.path

    # ---- inputs of every leaf, captured from real forwards
    def _capture(self) -> dict[str, dict[str, tuple[tuple[Any, ...], dict[str, Any]]]]:
        if self._inputs is not None:
            return self._inputs
        model = self.module
        names = set(self.space.leaves)
        captured: dict[str, dict[str, tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        phase_now = [""]

        def hook(name: str) -> Callable[..., None]:
            def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                captured.setdefault(phase_now[0], {}).setdefault(name, (
                    tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))
            return pre

        handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True)
                   for n, m in model.named_modules() if n in names]
        try:
            phase_now[0] = "prefill"
            step, prefill, _ = make_steps(no_grad_forward(model), model, self.workload,
                                          base_inputs(self.loaded, self.workload))
            captured.clear()  # the prefill that built the cache; capture clean passes below
            if prefill is not None:
                prefill()
            phase_now[0] = self.workload.phase
            step()
        finally:
            for h in handles:
                h.remove()
        self._inputs = captured
        return captured

    def _phases(self) -> tuple[str, ...]:
        return (self.workload.phase, "prefill") if self.workload.task == "causal-lm" else (self.workload.phase,)

    def leaf_seconds(self, choice: LeafChoice, exec_kind: str, phase: str, *, streamed: bool = False) -> float:
        """Measured median seconds of one leaf choice (measured now if the table lacks it).

        ``TimingSettings.mode="context"``: the leaf's time inside a real forward pass of the model with
        every leaf that can take this choice set to it (:meth:`_context_run`); ``"isolated"``: the leaf
        alone in a loop on its captured input. ``streamed``: the weights arrive fresh every pass, so a
        kernel that packs its weight (fbgemm int8-dynamic, CUDA tinygemm) repacks on every call: the
        repack (isolated: packing + call minus call) is added.
        """
        if self.space.variable(choice.leaf.name, "precision") is None:
            return 0.0  # norms, attention cores: no plan variable changes them; their time is in the overhead
        captured = self._capture().get(phase, {}).get(choice.leaf.name)
        if captured is None:  # a leaf the pass did not call (unused head, tied weight): it costs nothing
            return 0.0
        device = _exec_device(self.units[exec_kind])
        precision = choice.precision if choice.chosen else "float32"
        if self.timing.mode == "context":
            key = (f"ctx|{phase}|{device}|{choice.leaf.name}|{precision}|"
                   f"g{choice.group_size if precision == 'int4' else 0}|"
                   f"{choice.kernel if precision not in FLOAT_DTYPES else 'auto'}")
            if key not in self.table.unit_s:
                self._context_run(precision, choice.group_size, choice.kernel, exec_kind)
            base = self.table.unit_s.get(key)
            if base is None:  # the leaf cannot take it in a whole-model pass: time it alone
                base = self._isolated(choice, exec_kind, phase, repack=False)
        else:
            base = self._isolated(choice, exec_kind, phase, repack=False)
        if streamed and _packs(precision, choice.kernel, device):
            base += max(0.0, self._isolated(choice, exec_kind, phase, repack=True)
                        - self._isolated(choice, exec_kind, phase, repack=False))
        return base

    def _isolated(self, choice: LeafChoice, exec_kind: str, phase: str, *, repack: bool) -> float:
        """Median seconds of the leaf alone in a loop on its captured input (cached in the table)."""
        args, kwargs = self._capture()[phase][choice.leaf.name]
        device = _exec_device(self.units[exec_kind])
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        shape = tuple(first.shape) if first is not None else ()
        dtype = str(first.dtype).removeprefix("torch.") if first is not None else ""
        precision = choice.precision if choice.chosen else "float32"
        key = signature(choice, device, phase, shape, dtype) + ("|repack" if repack else "")
        hit = self.table.unit_s.get(key)
        if hit is not None:
            return hit
        module = self.module.get_submodule(choice.leaf.name)
        run = variant(module, precision, choice.group_size, choice.kernel).to(device)
        dev_args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        # Optionally (TimingSettings.cold_l2) rotate through copies of the layer that together exceed that
        # many L2 caches, so each call reads its weights cold rather than from L2 (see TimingSettings).
        nbytes = max(1, sum(t.numel() * t.element_size() for t in [*run.parameters(), *run.buffers()]))
        l2 = int(self.profile.cpu.caches.get("l2", 0) or 2**20) if device == "cpu" else 0
        cold = self.timing.cold_l2 * l2
        n_copies = min(MAX_COPIES, max(1, -(-cold // nbytes))) if cold else 1
        runs = [run] + [copy.deepcopy(run) for _ in range(n_copies - 1)]
        turn = [0]

        def call() -> Any:
            turn[0] = (turn[0] + 1) % len(runs)
            r = runs[turn[0]]
            if repack:
                r.release_prepared()
            return r(*dev_args, **kwargs)

        with torch.no_grad():
            for attempt in range(2):  # a noisy entry is measured once more, then labelled
                values = timed_samples(call, warmup=self.timing.warmup, repeats=self.timing.repeats,
                                       device=device, clock=self.timing.clock)
                spread = iqr_ratio(values)
                if key not in self.table.spread or spread < self.table.spread[key]:
                    self.table.unit_s[key], self.table.spread[key] = float(np.median(values)), spread
                if self.table.spread[key] <= NOISY:
                    break
            if self.table.spread[key] > NOISY and key not in self.table.noisy:
                self.table.noisy.append(key)
        self._dirty = True
        return self.table.unit_s[key]

    def _accepts(self, name: str, precision: str, group_size: int, kernel: str, exec_kind: str) -> bool:
        v = self.space.variable(name, "precision")
        if v is None or precision not in v.choices:
            return False
        j = v.choices.index(precision)
        mask = v.by_exec.get(exec_kind, (v.mask, {}))[0]
        if not (v.mask[j] and mask[j]):
            return False
        if precision == "int4":
            g = self.space.variable(name, "group_size")
            if g is not None and (group_size not in g.choices or not g.mask[g.choices.index(group_size)]):
                return False
        if precision not in FLOAT_DTYPES and kernel != "auto":
            return kernel in self.space.kernel_table.get(exec_kind, {}).get(precision, ())
        return True

    def _context_run(self, precision: str, group_size: int, kernel: str, exec_kind: str, *,
                     retry: bool = True) -> None:
        """Time every leaf that can take (precision, group, kernel) inside real passes of the model
        (``cost/profiled_context.py``); each leaf's median goes in the table, noisy entries measured once more."""
        combo = (precision, group_size, kernel, exec_kind)
        t = self.timing
        times, names = context_times(self, combo, warmup=t.step_warmup, repeats=t.step_repeats)
        noisy = store_context(self, combo, times, names)
        if noisy and retry:
            logger.info("%d of the %s entries noisy (IQR/median > %.2f); measuring them again", len(noisy),
                        precision, NOISY)
            self._context_run(precision, group_size, kernel, exec_kind, retry=False)
        elif noisy:
            self.table.noisy.extend(k for k in noisy if k not in self.table.noisy)

    # ---- whole steps on the runtime
    def _session_step(self, spec: SessionSpec, *, warmup: int | None = None, repeats: int | None = None,
                      prefill: bool = True, spread_key: str | None = None) -> tuple[float, float | None, dict[str, float]]:
        """(step median s, prefill median s or None, streaming counters per step) under a runtime Session;
        ``spread_key``: record the step's IQR/median (re-measured once when noisy) under that key."""

        model = copy.deepcopy(self.module)
        device = spec.default.device
        if spec.block_path is None:  # as apply_plan does: a model without a ModuleList uses its first Sequential

            spec = dataclasses.replace(spec, block_path=block_path(model))
        with Session(model, spec) as session:
            step, prefill_fn, _ = make_steps(session.forward, model, self.workload,
                                             base_inputs(self.loaded, self.workload))
            before = session.streamer.stats.fetches
            t = self.timing
            warm = t.step_warmup if warmup is None else warmup
            reps = t.step_repeats if repeats is None else repeats
            calls = 0
            best: tuple[float, float] | None = None  # (spread, median) of the steadier attempt of THIS call
            for _attempt in range(2 if spread_key else 1):
                values = timed_samples(step, warmup=warm, repeats=reps, device=device, clock=t.clock)
                calls += warm + reps
                spread = iqr_ratio(values)
                if best is None or spread < best[0]:
                    best = (spread, float(np.median(values)))
                if spread_key is None or best[0] <= NOISY:
                    break
            spread, median = best
            if spread_key is not None:  # this call's figure and its own spread (an earlier entry is replaced)
                self.table.spread[spread_key] = spread
                if spread > NOISY and spread_key not in self.table.noisy:
                    self.table.noisy.append(spread_key)
                elif spread <= NOISY and spread_key in self.table.noisy:
                    self.table.noisy.remove(spread_key)
            fetches = (session.streamer.stats.fetches - before) / calls
            nbytes = float(session.streamer.streamed_bytes_per_pass())
            pre = (timed(prefill_fn, warmup=1, repeats=max(3, t.step_repeats // 3), device=device,
                         clock=t.clock).median_s if prefill and prefill_fn is not None else None)
        return median, pre, {"fetches": fetches, "bytes": nbytes}

    def ensure_base(self) -> None:
        """Measure the fixed overhead per phase and the streaming costs (once; cached with the table)."""
        if self.table.overhead_s:
            return

        started = time.perf_counter()
        default = self.profile.default_unit()
        dev = _exec_device(default)
        self.table.settings["load_1m"] = load_average()
        if self.workload.phase not in self.table.baseline_s:  # else measured in rounds (measure_all)
            base, base_pre, _ = self._session_step(SessionSpec(default=BlockSpec(device=dev)),
                                                   spread_key=f"baseline|{self.workload.phase}")
            self.table.baseline_s = {self.workload.phase: base, **({"prefill": base_pre} if base_pre else {})}
        x0 = self.space.default_vector()
        for phase in self._phases():
            leaves = sum(self.leaf_seconds(c, b.exec_kind, phase) for b in resolve_blocks(self.space, x0)
                         for c in b.leaves)
            self.table.overhead_s[phase] = max(0.0, self.table.baseline_s[phase] - leaves)
            model = self.module
            step, prefill, step_inputs = make_steps(no_grad_forward(model), model, self.workload,
                                                    base_inputs(self.loaded, self.workload))
            if phase == "prefill":
                self.table.n_ops[phase] = count_ops(model, {"input_ids": base_inputs(self.loaded, self.workload)[
                    "input_ids"], "use_cache": False})
            else:
                self.table.n_ops[phase] = count_ops(model, step_inputs)
        for placement in self._streamed_placements():
            self.table.stream[placement] = self._measure_stream(placement)
        self.table.seconds += time.perf_counter() - started
        self._dirty = True
        self.fresh_at = time.time()

    def mark_changed(self) -> None:
        """The table was changed by its holder (an entry in ``table.settings``): ``save`` writes it."""
        self._dirty = True

    def resident_step(self) -> dict[str, Any]:
        """This model's step (and prefill) all resident on the default unit, run on the runtime: median seconds,
        IQR/median (re-measured once when noisy, then labelled), prefill median (None for classifiers)."""
        key = f"resident|{self.workload.phase}"
        step, pre, _ = self._session_step(SessionSpec(default=BlockSpec(device=_exec_device(
            self.profile.default_unit()))), spread_key=key)
        return {"median_s": step, "prefill_s": pre, "dispersion": self.table.spread.get(key, 0.0),
                "noisy": key in self.table.noisy}

    def stream_costs(self) -> dict[str, dict[str, Any]]:
        """Exposed streaming cost per fetch and per byte of every streamed placement of the space (measured once,
        kept in the table; ``save`` writes it): the analytic evaluator's streaming rates on a measured CPU."""
        for placement in self._streamed_placements():
            if placement not in self.table.stream:
                self.table.stream[placement] = self._measure_stream(placement)
                self._dirty = True
        return {k: dict(v) for k, v in self.table.stream.items()}

    def _streamed_placements(self) -> list[str]:
        found = []
        for v in self.space.variables:
            if v.knob == "placement":
                found += [c for c, ok in zip(v.choices, v.mask) if ok and "<-" in c and c not in found]
        return found

    def _measure_stream(self, placement: str) -> dict[str, Any]:
        """Exposed streaming cost per step at several weight formats -> per-fetch and per-byte cost.

        Every block streamed from ``home`` vs resident, at float32, bfloat16, int8 and int4 (same fetches,
        four byte counts); least squares of ``exposed = fetches x fetch_s + bytes x s_per_byte`` with both
        coefficients >= 0 (a negative slope from noise falls back to the per-fetch term alone).
        """

        exec_kind, _, home = placement.partition("<-")
        dev = _exec_device(self.units[exec_kind])
        n_blocks = sum(1 for b in self.space.blocks if b.is_block)
        points = []
        for fmt in STREAM_FORMATS:
            resident = SessionSpec(blocks=tuple(BlockSpec(device=dev, weight_format=fmt) for _ in range(n_blocks)),
                                   rest=BlockSpec(device=dev))
            streamed = SessionSpec(blocks=tuple(BlockSpec(device=dev, home=home, weight_format=fmt)
                                                for _ in range(n_blocks)), rest=BlockSpec(device=dev))
            try:
                t_res, _, _ = self._session_step(resident)
                t_str, _, counters = self._session_step(streamed)
            except Exception as exc:  # noqa: BLE001 - a format the runtime lacks here: fit without it
                logger.warning("streaming probe %s at %s failed (%s); skipped", placement, fmt, exc)
                continue
            points.append({"format": fmt, "exposed_s": t_str - t_res, **counters})
        if not points:
            raise InvalidArgumentError(f"placement {placement!r} could not be measured on this machine.")
        f = np.array([p["fetches"] for p in points])
        b = np.array([p["bytes"] for p in points])
        y = np.array([p["exposed_s"] for p in points])
        fetch_s, per_byte = float(max(0.0, y.mean()) / max(f.mean(), 1e-9)), 0.0
        if len(points) >= 2 and np.ptp(b) > 0:
            coef, *_ = np.linalg.lstsq(np.stack([f, b], axis=1), y, rcond=None)
            if coef[0] >= 0 and coef[1] >= 0:
                fetch_s, per_byte = float(coef[0]), float(coef[1])
            elif coef[1] < 0:
                fetch_s, per_byte = float(max(0.0, y.mean()) / max(f.mean(), 1e-9)), 0.0
            else:  # per-fetch negative: all of it per byte
                per_byte = float(max(0.0, (y @ b) / (b @ b)))
                fetch_s = 0.0
        logger.info("streaming %s: %.1f us per fetch, %.3f ns per byte", placement, fetch_s * 1e6, per_byte * 1e9)
        return {"fetch_s": fetch_s, "s_per_byte": per_byte, "points": points}

    def measure_all(self) -> int:
        """Measure every valid leaf choice of the space (so later evaluations only look up); returns entries.

        With ``timing.rounds`` > 1 a fresh table's baseline and context runs are timed in interleaved rounds
        (``profiled_context.measure_in_rounds``); the rest (isolated leaves, repacks, streaming) as before."""
        if self.timing.rounds > 1 and self.timing.mode == "context" and not self.table.overhead_s:
            combos = list(dict.fromkeys(
                (p, g, k, kind) for choice, kind, _ in self._choices() for p, g, k in [(
                    choice.precision, choice.group_size if choice.precision == "int4" else 0,
                    choice.kernel if choice.precision not in FLOAT_DTYPES else "auto")]))
            measure_in_rounds(self, [self._combo_args(c) for c in combos])
        self.ensure_base()
        for choice, kind, streams in self._choices():
            for phase in self._phases():
                for streamed in streams:
                    self.leaf_seconds(choice, kind, phase, streamed=streamed)
        if self.fresh_at is not None:  # measured here: fresh from the end of the build
            self.fresh_at = time.time()
        self.save()
        return len(self.table.unit_s)

    def _combo_args(self, combo: tuple[str, int, str, str]) -> tuple[str, int, str, str]:
        """A deduplicated (precision, group or 0, kernel, kind) as ``_context_run`` takes it (group 0 -> any)."""
        p, g, k, kind = combo
        return (p, g if p == "int4" else 128, k, kind)

    def _choices(self) -> Iterator[tuple[LeafChoice, str, list[bool]]]:
        """Every valid (leaf choice, execution kind, streamed-or-not list) of the space."""
        for v in self.space.variables:
            if v.knob != "precision":
                continue
            leaf = self.space.leaves[v.name]
            groups = self.space.variable(v.name, "group_size")
            kernels = self.space.variable(v.name, "kernel")
            for kind in self._exec_kinds(v):
                mask, _ = v.by_exec.get(kind, (v.mask, {}))
                for p, ok, static in zip(v.choices, mask, v.mask):
                    if not (ok and static):
                        continue
                    gs = ([g for g, m in zip(groups.choices, groups.mask) if m] if groups and p == "int4"
                          else [default_group(leaf)])
                    ks = (["auto"] if p in FLOAT_PRECISIONS or kernels is None else
                          list(self.space.kernel_table.get(kind, {}).get(p, ("auto",))))
                    streams = [False] + ([True] if self._can_stream(v, kind) else [])
                    for g in gs:
                        for k in ks:
                            yield LeafChoice(leaf, p, g, k, True), kind, streams

    def _can_stream(self, v: Any, kind: str) -> bool:
        """Whether the leaf of precision variable ``v`` can sit in a block streamed to the ``kind`` unit."""
        if v.parent is None:
            return False
        placement = self.space.variables[v.parent]
        return any(ok and c.startswith(kind + "<-") for c, ok in zip(placement.choices, placement.mask))

    def _exec_kinds(self, v: Any) -> list[str]:
        if v.parent is None:
            return [self.space.default_placement.partition("<-")[0]]
        placement = self.space.variables[v.parent]
        kinds = [c.partition("<-")[0] for c, ok in zip(placement.choices, placement.mask) if ok]
        return [k for k in dict.fromkeys(kinds) if k in self.units and k != "dla"]

    def kv_op_seconds(self) -> float:
        """Seconds per dispatch of the paged KV cache's gather on the default unit, measured once (cached).

        A decode step of the unmodified model at the workload's context through the runtime's paged float
        cache and through Hugging Face's, each in its own Session (the paged cache cannot be cropped, so its
        repeats decode at ``context``, ``context + 1``, ...); the difference over the dispatches the paged
        cache adds (``cost_kv.gather_ops`` minus HF's two) is what one costs here. Falls back to the
        table's launch overhead where the model has no paged KV cache."""
        return measure_kv_op_seconds(self)

    # ---- composition
    def revalidate(self) -> dict[str, Any]:
        """Re-validate the table against the machine now (``cost/profiled_drift.py``); later compositions use the
        new factor. Called by the first ``compose``; call it again to follow a machine whose state moved."""
        self.ensure_base()
        self.drift = revalidate_table(self)
        return self.drift

    @property
    def scale(self) -> float:
        """The factor every time term takes (1.0 until re-validated, or inside the band)."""
        return float(self.drift["scale"]) if self.drift else 1.0

    def drift_note(self) -> str:
        """The re-validation's clause for an estimate's method ("" when none was made)."""
        return describe_drift(self.drift)

    def compose(self, x: Any, phase: str) -> dict[str, Any]:
        """Latency of vector ``x`` in ``phase`` from the table (module docstring), with its parts; every time
        term scaled by the first use's re-validation (``scale``; ``unscaled_s`` the table's own sum)."""
        self.ensure_base()
        if self.drift is None and self.revalidate_on_use:
            self.revalidate()
        blocks = resolve_blocks(self.space, x)
        units_s = stream_s = 0.0
        streamed_bytes = 0
        for block in blocks:
            if block.exec_kind not in self.units or block.exec_kind == "dla":
                raise InvalidArgumentError(f"{block.name}: placement {block.placement!r} cannot be profiled on "
                                           f"{self.profile.name!r} (no such unit here); use the analytic evaluator.")
            units_s += sum(self.leaf_seconds(c, block.exec_kind, phase, streamed=block.streamed) for c in block.leaves)
            if block.streamed:
                nbytes, fetches = block_stream(block)
                cost = self.table.stream.get(block.placement)
                if cost is None:
                    raise InvalidArgumentError(f"{block.name}: placement {block.placement!r} was not profiled here.")
                stream_s += fetches * cost["fetch_s"] + nbytes * cost["s_per_byte"]
                streamed_bytes += nbytes
        overhead = self.table.overhead_s[phase]
        k = self.scale
        return {"latency_s": k * (overhead + units_s + stream_s), "overhead_s": k * overhead, "units_s": k * units_s,
                "stream_s": k * stream_s, "streamed_bytes": streamed_bytes, "table_scale": k,
                "unscaled_s": overhead + units_s + stream_s}


__all__ = ["ProfiledTable", "Profiler", "TimingSettings", "Workload", "base_inputs", "make_steps",
           "no_grad_forward", "signature", "timed", "variant"]
