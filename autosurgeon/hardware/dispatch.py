"""What an eager step pays on a GPU besides its work: per-op launch, per-step fixed cost, each linear format's floor.

The runtime's step on CUDA, as the evaluators and the evaluator-error benchmark time it, is eager: ``Session.forward``
of one decode token (``cost.workload.make_steps``; the captured CUDA-graph step is ``Session.generate``'s alone),
synchronised once at its end. At decode shapes such a step is bound by the host: each aten op costs its dispatch and
kernel launch, whatever it computes, and a quantized linear dispatches several ops (unpack, scale, cast) where a
float one dispatches one or two — on the H200 in session 7 uniform int8 / int4 / fp8 cost 0.9 / 1.7 / 3.1 ms more
per step than float32 on a 4-layer model, while a bandwidth roofline priced them all alike. So the hardware profile
measures, per GPU (``HardwareProfile.dispatch["cuda:N"]``):

* ``op_s``: seconds per aten op of a Hugging Face decode step at tiny widths (a 2-layer, width-64 Llama, 32 cached
  positions: every op launch-bound), run back to back and synchronised once per round: the host's cost per op of
  a real eager step, its Python around the ops included (the step's non-GEMV ops are priced at it where the step's
  rest is not measured). ``op_mix_s``, the same over a bare op mix (``cost.gemv._OpMix``: norms, rotary-like
  slicing, attention, activation, residuals), is kept beside it. On this project's CPU (1 thread, load 11) the zoo's
  tiny-llama step rest (linears nulled, on the runtime) cost 8.6 us per op, the HF step 11.1 (+29 %), the op mix
  4.7-5.2 (-40 to -45 %); on the H200 the op mix was 4.6 us against 6.7 per op of a real step's rest (session 8's
  probe, before ``op_s`` was the HF step: not yet measured there);
* ``step_s``: one tiny op then a synchronise — what the step's closing synchronise (and the last kernel's drain)
  adds once per step;
* ``streamed_kernels``: per weight-only format whose default kernel there packs, the kernel a streamed layer runs
  instead (the Streamer's rule), whose floor a streamed layer then costs;
* ``linear``: per ``precision|kernel`` (kernel ``auto``: the runtime's default on this device, resolved as the
  runtime resolves it), the seconds of one call of a ``1 x in -> out`` decode layer at a small width
  (``FLOOR_SHAPE``), back to back and synchronised once per round, and the aten ops of that call: the format's
  per-call floor (host dispatch + launches), which the cost model takes when larger than the layer's roofline.

Timing (MEASURING.md): wall clock (a GPU's work is not the process's CPU time), warm-up first, interleaved rounds
(entries visited in a rotated order each round), median over rounds and IQR/median; an entry above ``NOISY`` is
labelled so. A profile without this record (a preset on paper, or one measured before it existed) keeps the
documented launch default of ``cost.base`` and says so in the analytic method.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autosurgeon.errors import InvalidArgumentError

NOISY = 0.15  # IQR/median above which an entry is labelled noisy
FLOOR_SHAPE = (256, 256)  # in, out of the linear floor entries: small enough to be bound by dispatch, not bytes
MAX_SECONDS = 1.0  # bounds a stored figure: catches a typo, not real hardware


def _sync(device: Any) -> Callable[[], None]:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _rounds(fns: Sequence[Callable[[], Any]], *, rounds: int, calls: int, sync: Callable[[], None]) -> list[list[float]]:
    """Per fn, seconds per call of each round: ``calls`` back-to-back calls then one synchronise, fns interleaved."""
    out: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        shift = r % max(1, len(fns))
        for i in list(range(shift, len(fns))) + list(range(shift)):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[i]()
            sync()
            out[i].append((time.perf_counter() - t0) / calls)
    return out


def _summary(values: list[float]) -> tuple[float, float]:
    median = statistics.median(values)
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [median, median, median]
    return median, ((q[2] - q[0]) / median if median > 0 else 0.0)


def linear_formats(device: Any) -> list[tuple[str, str]]:
    """``(precision, kernel)`` pairs to time on ``device``: floats and int8-dynamic with "auto", weight-only formats
    with "auto" and every named kernel of the runtime there."""
    from autosurgeon import precisions  # lazy: profile validation imports this module; keep it light
    from runtime.kernels import available_kernels  # lazy: the runtime's kernels import torch and compile lazily

    kind = getattr(device, "type", str(device))
    out = []
    for name in precisions.TABLE:
        if name in ("float32", "bfloat16", "float16", "int8-dynamic"):
            out.append((name, "auto"))
            continue
        # "auto" always (a format without a named kernel here fails to build and is skipped, named)
        out += [(name, "auto")] + [(name, k) for k in available_kernels(name, kind) if k != "int8-dynamic"]
    return out


def measure_dispatch(device: Any, *, rounds: int = 5, calls: int = 20,
                     formats: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The record ``HardwareProfile.dispatch[unit]`` holds for ``device`` (module docstring); formats that fail to
    build or run there are left out and named in ``skipped``."""
    import torch
    from torch import nn

    from autosurgeon.cost.base import count_ops  # lazy: cost imports hardware (an import cycle at module level)
    from autosurgeon.cost.gemv import _OpMix  # lazy: as above
    from autosurgeon.cost.profiled_table import variant  # lazy: as above

    if rounds < 3 or calls < 1:
        raise InvalidArgumentError(f"`rounds` must be >= 3 and `calls` >= 1, got {rounds} and {calls}.")
    device = torch.device(device)
    sync = _sync(device)
    torch.manual_seed(0)
    with torch.no_grad():
        mix, x = _OpMix().eval(), torch.randn(1, 1, 64)
        mix_ops = count_ops(lambda x: mix(x), {"x": x})
        mix = mix.to(device)
        for att in mix.attn:
            att.k, att.v = att.k.to(device), att.v.to(device)
        x = x.to(device)
        tiny = torch.zeros(8, device=device)
        in_f, out_f = FLOOR_SHAPE
        hf_step, hf_ops = _hf_decode_step(device)
        entries, fns, skipped = [], [lambda: mix(x), lambda: (tiny.add_(0), sync()), hf_step], []
        xin = torch.randn(1, 1, in_f, device=device)
        for precision, kernel in (formats if formats is not None else linear_formats(device)):
            try:
                module = variant(nn.Linear(in_f, out_f), precision, 32, kernel).to(device).eval()
                for _ in range(3):  # warm: the first call can select, compile or pack
                    module(xin)
                sync()
                ops = count_ops(lambda x, m=module: m(x), {"x": xin})
            except Exception as exc:  # noqa: BLE001 — a format this device cannot run is left out, named
                skipped.append(f"{precision}|{kernel}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            entries.append((f"{precision}|{kernel}", ops))
            fns.append(lambda m=module: m(xin))
        for fn in fns:
            fn()
        sync()
        times = _rounds(fns, rounds=rounds, calls=calls, sync=sync)
    mix_s, mix_disp = _summary([t / mix_ops for t in times[0]])
    step_s, step_disp = _summary(times[1])
    op_s, op_disp = _summary([t / hf_ops for t in times[2]])
    linear = {}
    for (key, ops), values in zip(entries, times[3:]):
        median, disp = _summary(values)
        linear[key] = {"s": median, "ops": int(ops), "dispersion": disp, "noisy": disp > NOISY}
    return {"op_s": op_s, "op_dispersion": op_disp, "op_mix_s": mix_s, "op_mix_dispersion": mix_disp,
            "streamed_kernels": streamed_kernels(device),
            "step_s": step_s, "step_dispersion": step_disp,
            "linear": linear, "shape": list(FLOOR_SHAPE), "skipped": skipped,
            "method": (f"wall clock, {rounds} interleaved rounds x {calls} back-to-back calls, one synchronise per "
                       f"round, median; op_s: a tiny HF Llama decode step ({hf_ops} ops) / its ops; op_mix_s: "
                       f"_OpMix ({mix_ops} ops) / its ops; step_s: one tiny op + synchronise; "
                       f"linear: 1 x {in_f} -> {out_f} per precision|kernel")}


def streamed_kernels(device: Any) -> dict[str, str]:
    """Per weight-only format whose default kernel on ``device`` packs its weight, the kernel the runtime runs a
    STREAMED layer of it with instead (``runtime.kernels.linear.use_unpacked_kernels``: packing on every fetch would
    cost more): on CUDA, int4's tinygemm -> the Triton GEMV on the canonical codes."""
    from runtime.kernels.select import default_kernel, unpacked_kernel  # lazy: the runtime's kernels import torch

    out = {}
    for fmt in ("int8", "int4", "fp8"):
        try:
            packs = default_kernel(fmt, device).prepare is not None
            kernel = unpacked_kernel(fmt, device) if packs else None
        except Exception:  # noqa: BLE001 — a format without a kernel on this device has no streamed kernel either
            continue
        if kernel is not None:
            out[fmt] = kernel.name
    return out


def _hf_decode_step(device: Any) -> tuple[Callable[[], Any], int]:
    """One decode step of a tiny Hugging Face Llama on ``device`` (its cache grows a position per call: the op
    count does not change) and the aten ops it dispatches."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autosurgeon.cost.base import count_ops  # lazy: cost imports hardware (an import cycle at module level)
    from autosurgeon.zoo import LoadedModel  # lazy: the zoo imports the models and transformers

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).eval()
    inputs = LoadedModel(name="dispatch-probe", model=model, task="causal-lm", source="factory").example_inputs(
        1, 32, phase="decode", seed=0)
    with torch.no_grad():
        ops = count_ops(model, inputs)

    def step() -> Any:
        with torch.no_grad():
            return model(**inputs)

    for _ in range(3):
        step()
    return step, ops


@dataclass(frozen=True)
class DispatchCosts:
    """A unit's measured dispatch record, checked (``from_record``)."""

    op_s: float
    step_s: float
    linear: Mapping[str, Mapping[str, float]]
    streamed_kernels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, where: str) -> DispatchCosts:
        def seconds(value: Any, name: str) -> float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not 0 <= value <= MAX_SECONDS:
                raise InvalidArgumentError(f"{where}.{name} must be seconds in [0, {MAX_SECONDS:g}], got {value!r}; "
                                           "re-measure the profile with `autosurgeon profile`.")
            return float(value)

        if not isinstance(record, Mapping):
            raise InvalidArgumentError(f"{where} must be an object, got {type(record).__name__}; re-measure the "
                                       "profile with `autosurgeon profile`.")
        linear = {}
        for key, entry in dict(record.get("linear", {})).items():
            ops = entry.get("ops") if isinstance(entry, Mapping) else None
            if not isinstance(ops, int) or isinstance(ops, bool) or ops < 0:
                raise InvalidArgumentError(f"{where}.linear[{key!r}].ops must be a count >= 0, got {ops!r}; "
                                           "re-measure the profile with `autosurgeon profile`.")
            linear[str(key)] = {"s": seconds(entry.get("s"), f"linear[{key!r}].s"), "ops": ops}
        streamed = record.get("streamed_kernels", {})
        if not isinstance(streamed, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in streamed.items()):
            raise InvalidArgumentError(f"{where}.streamed_kernels must map formats to kernel names, got {streamed!r}; "
                                       "re-measure the profile with `autosurgeon profile`.")
        return cls(op_s=seconds(record.get("op_s"), "op_s"), step_s=seconds(record.get("step_s", 0.0), "step_s"),
                   linear=linear, streamed_kernels=dict(streamed))

    def floor(self, precision: str, kernel: str) -> Mapping[str, float] | None:
        """The linear entry of ``precision`` with ``kernel`` (its "auto" entry when the named one is missing)."""
        return self.linear.get(f"{precision}|{kernel}") or self.linear.get(f"{precision}|auto")


def dispatch_costs(profile: Any, unit_name: str) -> DispatchCosts | None:
    """The checked dispatch record of ``unit_name`` in ``profile`` (None: the profile did not measure it)."""
    record = (getattr(profile, "dispatch", None) or {}).get(unit_name)
    if record is None:
        return None
    return DispatchCosts.from_record(record, where=f"profile {profile.name!r} dispatch[{unit_name!r}]")


__all__ = ["FLOOR_SHAPE", "DispatchCosts", "dispatch_costs", "linear_formats", "measure_dispatch", "streamed_kernels"]
