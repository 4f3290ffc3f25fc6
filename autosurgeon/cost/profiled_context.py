"""The profiled table's context runs (each leaf timed inside real passes) and their interleaved rounds.

Split out of ``cost/profiled.py`` (one idea per file). A context run times every leaf that can take one
(precision, group, kernel) choice inside real forward passes of a model copy carrying that choice.

**Rounds** (``TimingSettings.rounds`` > 1, MEASURING.md): the unmodified step on the runtime (the table's baseline)
and every choice's context run are timed in interleaved rounds (a new seeded shuffled order each round, the repeats split
among the rounds), each entry the median of all its rounds' samples. Measured one after another, each entry
took the machine's state at its own moment: on the shared 2-core machine a load change between the baseline
and a choice's run went whole into the fixed overhead (baseline minus the float leaves) or into that choice, and
the same unmodified plan then measured 1.3-2x apart within one process (session 5's quiet run).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.cost.dispersion import NOISY, iqr_ratio, timed_samples
from autosurgeon.cost.profiled_table import FLOAT_DTYPES, _exec_device, variant
from autosurgeon.cost.workload import base_inputs, make_steps, no_grad_forward
from autosurgeon.transforms.place import block_path
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec

if TYPE_CHECKING:  # annotations only
    from autosurgeon.cost.profiled import Profiler

logger = get_logger(__name__)

Times = dict[str, dict[str, list[float]]]  # phase -> leaf name -> seconds of each call
Combo = tuple[str, int, str, str]  # (precision, group size, kernel, execution kind)


def _key(device: str, phase: str, name: str, precision: str, group_size: int, kernel: str) -> str:
    group = group_size if precision == "int4" else 0
    kern = kernel if precision not in FLOAT_DTYPES else "auto"
    return f"ctx|{phase}|{device}|{name}|{precision}|g{group}|{kern}"


def context_times(p: Profiler, combo: Combo, *, warmup: int, repeats: int) -> tuple[Times, list[str]]:
    """(per-call seconds of every leaf taking ``combo``, per phase; those leaves' names) from ``repeats`` steps (and
    ``max(3, repeats // 3)`` prefills) after ``warmup``. Forward pre/post hooks read the clock around each call;
    their own cost (two clock reads) is part of every reading, as the runtime's module calls are of the pass."""
    precision, group_size, kernel, exec_kind = combo
    device = _exec_device(p.units[exec_kind])
    model = copy.deepcopy(p.module).to(device)
    names = [n for n in p.space.leaves if p._accepts(n, precision, group_size, kernel, exec_kind)]
    for name in names:
        if precision == (p.space.leaves[name].dtype or "float32"):
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                variant(model.get_submodule(name), precision, group_size, kernel))
    clock = time.process_time if p.timing.clock == "cpu" else time.perf_counter
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    record: list[str | None] = [None]
    times: Times = {}
    starts: dict[str, float] = {}

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if record[0] is not None:
                sync()
                starts[name] = clock()
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if record[0] is not None:
                sync()
                times.setdefault(record[0], {}).setdefault(name, []).append(clock() - starts[name])
        return hook

    handles = []
    for name in names:
        m = model.get_submodule(name)
        handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in base_inputs(p.loaded, p.workload).items()}
    try:
        step, prefill, _ = make_steps(no_grad_forward(model), model, p.workload, inputs)
        runs = [(p.workload.phase, step)] + ([("prefill", prefill)] if prefill is not None else [])
        for phase, fn in runs:
            record[0] = None
            for _ in range(warmup):
                fn()
            record[0] = phase
            for _ in range(repeats if phase != "prefill" else max(3, repeats // 3)):
                fn()
            record[0] = None
    finally:
        for h in handles:
            h.remove()
    return times, names


def store_context(p: Profiler, combo: Combo, times: Times, names: list[str]) -> list[str]:
    """Each leaf's median into the table (a re-measure that came out noisier leaves the first); returns the keys
    still above ``NOISY``. Leaves the pass never called cost nothing."""
    precision, group_size, kernel, exec_kind = combo
    device = _exec_device(p.units[exec_kind])
    table = p.table
    touched = []
    for phase, per_leaf in times.items():
        for name, values in per_leaf.items():
            key = _key(device, phase, name, precision, group_size, kernel)
            touched.append(key)
            spread = iqr_ratio(values)
            if key in table.spread and table.spread[key] <= spread:
                continue  # a re-measure that came out noisier: the first one stays
            table.unit_s[key] = float(np.median(values))
            table.spread[key] = spread
            if spread <= NOISY and key in table.noisy:
                table.noisy.remove(key)
    for name in names:
        for phase in (p.workload.phase, "prefill"):
            if phase in times or phase == p.workload.phase:
                table.unit_s.setdefault(_key(device, phase, name, precision, group_size, kernel), 0.0)
    p.mark_changed()
    return [k for k in touched if table.spread[k] > NOISY]


def _rounds(p: Profiler, combos: list[Combo], step: Callable[[], Any] | None, prefill: Callable[[], Any] | None,
            dev: str) -> tuple[dict[int, Times], dict[int, list[str]], list[float], list[float]]:
    """One set of interleaved rounds over ``combos`` (and the baseline ``step`` when given): every sample kept."""
    t = p.timing
    per = max(1, math.ceil(t.step_repeats / t.rounds))
    samples: dict[int, Times] = {i: {} for i in range(len(combos))}
    names: dict[int, list[str]] = {}
    base: list[float] = []
    pre: list[float] = []
    jobs = ([-1] if step is not None else []) + list(range(len(combos)))  # -1: the baseline
    rng = np.random.default_rng(len(jobs))  # a fixed seed: the same table settings time in the same orders
    for _ in range(t.rounds):
        warm = t.step_warmup  # every round: a context run's model copy is built afresh each round
        for j in (int(i) for i in rng.permutation(jobs)):
            if j < 0:
                base += timed_samples(step, warmup=warm, repeats=per, device=dev, clock=t.clock)
                if prefill is not None:
                    pre += timed_samples(prefill, warmup=0, repeats=max(1, per // 3), device=dev, clock=t.clock)
                continue
            times, names[j] = context_times(p, combos[j], warmup=warm, repeats=per)
            for phase, per_leaf in times.items():
                for name, values in per_leaf.items():
                    samples[j].setdefault(phase, {}).setdefault(name, []).extend(values)
    return samples, names, base, pre


def measure_in_rounds(p: Profiler, combos: list[Combo]) -> None:
    """The baseline step on the runtime and every combo's context run, in ``p.timing.rounds`` interleaved rounds.

    Each round runs the baseline and the combos in a new seeded shuffled order, each with ``step_warmup`` warm-up steps
    (every round: a context run's model copy is fresh each round), and ``ceil(step_repeats / rounds)`` timed steps; the samples of all rounds
    make each entry (median, IQR/median). Combos with entries above ``NOISY`` get one more set of rounds (the
    steadier figure of the two stays, as in a single run's re-measure), then stay labelled. Sets
    ``table.baseline_s`` and its spread; ``Profiler.ensure_base`` then keeps them.
    """
    dev = _exec_device(p.profile.default_unit())
    model = copy.deepcopy(p.module)
    spec = SessionSpec(default=BlockSpec(device=dev), block_path=block_path(model))
    with Session(model, spec) as session:  # the baseline, as Profiler._session_step runs it
        step, prefill_fn, _ = make_steps(session.forward, model, p.workload, base_inputs(p.loaded, p.workload))
        samples, names, base, pre = _rounds(p, combos, step, prefill_fn, dev)
    noisy_combos = [j for j, combo in enumerate(combos) if store_context(p, combo, samples[j], names[j])]
    if noisy_combos:
        logger.info("%d of %d choices with noisy entries (IQR/median > %.2f); one more set of rounds for them",
                    len(noisy_combos), len(combos), NOISY)
        again = [combos[j] for j in noisy_combos]
        samples, names, _, _ = _rounds(p, again, None, None, dev)
        for j, combo in enumerate(again):
            noisy = store_context(p, combo, samples[j], names[j])
            p.table.noisy.extend(k for k in noisy if k not in p.table.noisy)
    key = f"baseline|{p.workload.phase}"
    p.table.baseline_s = {p.workload.phase: float(np.median(base)), **({"prefill": float(np.median(pre))} if pre else {})}
    p.table.spread[key] = iqr_ratio(base)
    if p.table.spread[key] > NOISY and key not in p.table.noisy:
        p.table.noisy.append(key)
    p.table.settings["rounds"] = {"rounds": p.timing.rounds, "combos": len(combos), "measured_again": len(noisy_combos)}
    p.mark_changed()


__all__ = ["context_times", "measure_in_rounds", "store_context"]
