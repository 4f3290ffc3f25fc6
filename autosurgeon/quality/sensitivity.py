"""Per-unit quantization sensitivity: the fast quality proxy for plans.

Two measurements per linear/conv unit, on calibration data (``autosurgeon.quality.calibration``, training split):

* **divergence** per (unit, precision): the mean KL(p_ref || p_unit) of the output distributions
  (next-token distributions of an LM, class distributions of a classifier) with ONLY that unit changed,
  through the runtime's real numerics (``autosurgeon.quality.precision_swap``). The unmodified model's outputs
  are computed once. The same forwards give the signed change of the calibration loss (``loss_delta``).
* **Hessian trace** per unit: ``Tr(H)`` of the calibration cross-entropy w.r.t. the unit's weight
  (Hutchinson, ``autosurgeon.quality.hutchinson``). HAWQ's sensitivity of a unit at a precision is
  ``Omega = Tr(H) / n_params * ||Q(W) - W||^2`` (:meth:`SensitivityTable.omega`).

A plan's predicted quality loss is the SUM over its units (HAWQ-style additivity, which ignores
interactions between units): :meth:`SensitivityTable.predict_loss`. How well that ranks real plans is
measured in ``experiments/benchmarks/sensitivity_rank.py``.

Tables are cached as JSON under ``<cache>/sensitivity/`` keyed by the model's architecture
fingerprint, a hash of its weights' VALUES (sensitivity depends on them), the calibration data's
fingerprint and every setting; the cache lives on disk, the table in the object the caller holds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap, wrap
from autosurgeon.models.cache import cache_root
from autosurgeon.plan import model_fingerprint
from autosurgeon.quality.calibration import (
    CalibrationData,
    calibration_for,
    default_calibration,
    module_of,
    run_model,
)
from autosurgeon.quality.flip_proxy import margin_change_sq, reference_margins
from autosurgeon.quality.hutchinson import unit_hessian_traces
from autosurgeon.quality.precision_swap import precision_units, supported_precisions, swapped, weight_perturbation
from runtime.kernels import default_kernel

logger = get_logger(__name__)

TABLE_TYPE = "autosurgeon.SensitivityTable"
TABLE_VERSION = 3  # 3: classifiers keep their reference margins and each unit's margin noise (flip_proxy)
DEFAULT_PRECISIONS = ("bfloat16", "float16", "int8", "int4", "int8-dynamic")
PROXIES = ("divergence", "hessian", "loss_delta")


@dataclass(frozen=True)
class SensitivityTable:
    """Measured sensitivities of one model (weights included) on one calibration set.

    Attributes:
        divergence: ``{(fqn, precision): mean KL}`` (nats per position) with only that unit changed.
        hessian: ``{fqn: Tr(H)}`` of the calibration loss w.r.t. the unit's weight (empty if not asked for).
        params: ``{fqn: weight elements}``.
        perturbation: ``{(fqn, precision): ||Q(W) - W||^2}``.
        metric: what ``divergence`` holds (``"kl_next_token"`` or ``"kl_logits"``).
        key: the cache key (fingerprints + settings hash).
        settings: calibration and measurement settings, for reports.
        loss_delta: ``{(fqn, precision): signed change of the calibration NLL per position}`` (nats), the
            first-order-aware alternative to the KL: quantization noise can also LOWER a loss.
        seconds: wall time of each phase (``reference``, ``divergence``, ``hessian``) when measured.
        margin_mse: classifiers: ``{(fqn, precision): mean square change of the reference's top-1 margins}``
            with only that unit changed (``quality.flip_proxy``); empty for other tasks.
        margins: classifiers: per calibration image, the reference's smallest top-1 margins (log-prob gaps).
        correct: classifiers: per calibration image, whether the reference's top-1 is the label.
    """

    divergence: Mapping[tuple[str, str], float]
    hessian: Mapping[str, float]
    params: Mapping[str, int]
    perturbation: Mapping[tuple[str, str], float]
    metric: str
    loss_delta: Mapping[tuple[str, str], float] = field(default_factory=dict)
    key: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    margin_mse: Mapping[tuple[str, str], float] = field(default_factory=dict)
    margins: Sequence[Sequence[float]] = ()
    correct: Sequence[bool] = ()

    @property
    def units(self) -> list[str]:
        return list(self.params)

    @property
    def precisions(self) -> list[str]:
        return sorted({p for _, p in self.divergence}, key=lambda p: DEFAULT_PRECISIONS.index(p)
                      if p in DEFAULT_PRECISIONS else len(DEFAULT_PRECISIONS))

    def omega(self, fqn: str, precision: str) -> float:
        """HAWQ's sensitivity: average Hessian trace per weight times ``||Q(W) - W||^2``."""
        if fqn not in self.hessian:
            raise InvalidArgumentError(f"no Hessian trace for unit {fqn!r}; measure with `hessian_samples` >= 1.")
        return self.hessian[fqn] / self.params[fqn] * self.perturbation[(fqn, precision)]

    def predict_loss(self, decisions: Mapping[str, Any], *, proxy: str = "divergence") -> float:
        """Predicted quality loss of a plan: the sum of its units' sensitivities (``float32`` adds 0).

        Args:
            decisions: ``{fqn: precision}`` or ``{fqn: {"precision": ..., ...}}`` (other knobs ignored);
                units not named stay float32.
            proxy: ``"divergence"`` (sum of KL), ``"hessian"`` (sum of HAWQ's Omega) or ``"loss_delta"`` (sum of
                signed calibration-loss changes; may be negative).
        """
        if proxy not in PROXIES:
            raise InvalidArgumentError(f"`proxy` must be one of {PROXIES}, got {proxy!r}.")
        total = 0.0
        for fqn, decision in decisions.items():
            precision = decision.get("precision", "float32") if isinstance(decision, Mapping) else decision
            if precision == "float32":
                continue
            if fqn not in self.params:
                raise InvalidArgumentError(f"unit {fqn!r} is not in the sensitivity table; its units: "
                                           f"{', '.join(self.units[:8])}{' ...' if len(self.units) > 8 else ''}.")
            if (fqn, precision) not in self.divergence:
                raise InvalidArgumentError(f"precision {precision!r} of unit {fqn!r} was not measured; measured "
                                           f"precisions: {self.precisions}.")
            if proxy == "divergence":
                total += self.divergence[(fqn, precision)]
            elif proxy == "hessian":
                total += self.omega(fqn, precision)
            else:
                total += self.loss_delta[(fqn, precision)]
        return total

    def to_json(self) -> str:
        data = {
            "divergence": [[f, p, v] for (f, p), v in self.divergence.items()],
            "perturbation": [[f, p, v] for (f, p), v in self.perturbation.items()],
            "loss_delta": [[f, p, v] for (f, p), v in self.loss_delta.items()],
            "hessian": dict(self.hessian), "params": dict(self.params), "metric": self.metric, "key": self.key,
            "settings": dict(self.settings), "seconds": dict(self.seconds),
            "margin_mse": [[f, p, v] for (f, p), v in self.margin_mse.items()],
            "margins": [list(map(float, m)) for m in self.margins], "correct": [bool(c) for c in self.correct],
        }
        return json.dumps(wrap(TABLE_TYPE, TABLE_VERSION, data), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable:
        d = unwrap(text, type_name=TABLE_TYPE, version=TABLE_VERSION, what="sensitivity table", fix="measure it again")
        return cls(
            divergence={(f, p): float(v) for f, p, v in d["divergence"]},
            hessian={k: float(v) for k, v in d["hessian"].items()},
            params={k: int(v) for k, v in d["params"].items()},
            perturbation={(f, p): float(v) for f, p, v in d["perturbation"]},
            loss_delta={(f, p): float(v) for f, p, v in d["loss_delta"]},
            metric=d["metric"], key=d["key"], settings=d["settings"], seconds=d["seconds"],
            margin_mse={(f, p): float(v) for f, p, v in d.get("margin_mse", [])},
            margins=[[float(v) for v in m] for m in d.get("margins", [])],
            correct=[bool(c) for c in d.get("correct", [])],
        )


def weights_hash(model: nn.Module) -> str:
    """sha256 over every parameter's and buffer's name, shape, dtype and bytes (16 hex digits)."""
    h = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _kl_and_nll(ref_logp: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Sums over positions of KL(ref || cand) and of the candidate's NLL of ``targets``, in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = float((ref_logp.exp() * (ref_logp - logp)).sum())
    nll = float(-logp.gather(-1, targets.unsqueeze(-1)).sum())
    return kl, nll


@torch.no_grad()
def _divergences(model: nn.Module, calibration: CalibrationData, units: Sequence[str],
                 precisions: Mapping[str, Sequence[str]], *, group_size: int, batch_size: int,
                 flips: dict[str, Any] | None = None
                 ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float], float]:
    """``(KL per position, signed NLL change per position, seconds for the reference)`` per (unit, precision);
    for images also fills ``flips`` (``margin_mse``, ``margins``, ``correct``: ``quality.flip_proxy``)."""
    flips = {} if flips is None else flips
    flips.setdefault("margin_mse", {})
    device = next(model.parameters()).device
    batches = list(calibration.batches(batch_size, device))
    started = time.perf_counter()
    if calibration.kind == "embeddings":
        return _embedding_divergences(model, calibration, units, precisions, group_size=group_size,
                                      batch_size=batch_size)
    refs = [torch.log_softmax(run_model(model, calibration.kind, x).float(), dim=-1) for x, _ in batches]
    reference_s = time.perf_counter() - started
    ref_nll = sum(float(-r.gather(-1, y.unsqueeze(-1)).sum()) for r, (_, y) in zip(refs, batches))
    positions = sum(r[..., 0].numel() for r in refs)
    images = calibration.kind == "images"
    kls: dict[tuple[str, str], float] = {}
    deltas: dict[tuple[str, str], float] = {}
    for fqn in units:
        for precision in precisions[fqn]:
            kl = nll = msq = 0.0
            count = 0
            with swapped(model, {fqn: precision}, group_size=group_size):
                for ref, (x, y) in zip(refs, batches):
                    logits = run_model(model, calibration.kind, x)
                    k, n = _kl_and_nll(ref, logits, y)
                    kl, nll = kl + k, nll + n
                    if images:  # the classifier's margin noise (quality.flip_proxy)
                        sq, c = margin_change_sq(ref, torch.log_softmax(logits.float(), dim=-1))
                        msq, count = msq + sq, count + c
            kls[(fqn, precision)] = max(0.0, kl / positions)  # clamp float rounding below zero
            deltas[(fqn, precision)] = (nll - ref_nll) / positions
            if images:
                flips["margin_mse"][(fqn, precision)] = msq / max(1, count)
    if images:
        tops, margins = zip(*(reference_margins(r) for r in refs))
        flips["margins"] = [list(map(float, m)) for m in torch.cat(margins)]
        flips["correct"] = [bool(c) for c in torch.cat([t.cpu() == y.cpu() for t, (_, y) in zip(tops, batches)])]
    return kls, deltas, reference_s


@torch.no_grad()
def _embedding_divergences(model: nn.Module, calibration: CalibrationData, units: Sequence[str],
                           precisions: Mapping[str, Sequence[str]], *, group_size: int, batch_size: int
                           ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float], float]:
    """Encoders: ``1 - mean cosine`` of mean-pooled embeddings per (unit, precision): encoder quality's own loss."""
    device = next(model.parameters()).device
    batches = list(calibration.batches(batch_size, device))
    started = time.perf_counter()
    refs = [run_model(model, "embeddings", x) for x, _ in batches]  # (B, H) each
    reference_s = time.perf_counter() - started
    out: dict[tuple[str, str], float] = {}
    for fqn in units:
        for precision in precisions[fqn]:
            with swapped(model, {fqn: precision}, group_size=group_size):
                cos = torch.cat([torch.nn.functional.cosine_similarity(ref.double(),
                                                                       run_model(model, "embeddings", x).double(),
                                                                       dim=1) for ref, (x, _) in zip(refs, batches)])
            out[(fqn, precision)] = max(0.0, 1.0 - float(cos.mean()))
    return out, dict(out), reference_s


def measure_sensitivity(
    model: Any,
    *,
    calibration: CalibrationData | None = None,
    units: Sequence[str] | None = None,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    group_size: int = 128,
    hessian_samples: int = 8,
    seed: int = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> SensitivityTable:
    """Measure (or load from the cache) the :class:`SensitivityTable` of ``model``.

    Args:
        model: an ``nn.Module`` or a zoo ``LoadedModel`` (its task picks the default calibration data).
        calibration: the data; default ``calibration.default_calibration(task)`` (training split).
        units: linear/conv FQNs (default: all of them, ``precision_swap.precision_units``).
        precisions: measured where the unit supports them here (``int8-dynamic`` needs fbgemm, linears only).
        group_size: int4 group size (a multiple of 32).
        hessian_samples: Hutchinson vectors; 0 skips the Hessian.
        seed: seeds the Hutchinson vectors.
        batch_size: calibration samples per forward.
        use_cache: read and write ``<cache>/sensitivity/<key>.json``.
        cache_dir: cache root (default ``$AUTOSURGEON_CACHE`` or ``~/.cache/autosurgeon``).
        threads: torch CPU threads during the measurement (restored after); None leaves them. On a busy
            2-core machine, 1 thread ran tiny-llama's calibration forward 2-20x faster than 2 (OpenMP
            spin-waits on a preempted thread), so callers there should pass 1.
    """
    module = module_of(model)
    if calibration is None:
        task = getattr(model, "task", None)
        if task is None and type(module).__name__.endswith("ForCausalLM"):
            task = "causal-lm"
        # A LoadedModel gets data in its own vocabulary (zoo models: their training data, as before).
        calibration = calibration_for(model) if task is not None and not isinstance(model, nn.Module) \
            else default_calibration(task or "custom")
    if calibration.kind == "embeddings":
        hessian_samples = 0  # no loss to take a Hessian of: the divergence (1 - cosine) is the whole proxy
    if hessian_samples < 0:
        raise InvalidArgumentError(f"`hessian_samples` must be >= 0, got {hessian_samples}.")
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"`threads` must be >= 1 or None, got {threads}.")
    all_units = precision_units(module)
    units = list(all_units if units is None else units)
    unknown = [u for u in units if u not in all_units]
    if unknown:
        raise InvalidArgumentError(f"`units` {unknown[:4]} are not linear/conv units of the model; see "
                                   "precision_units(model).")
    bad = [p for p in precisions if p not in DEFAULT_PRECISIONS]
    if bad:
        raise InvalidArgumentError(f"`precisions` must be drawn from {DEFAULT_PRECISIONS}, got {bad}.")
    per_unit = {u: [p for p in precisions if p in supported_precisions(module.get_submodule(u))] for u in units}
    device = next(module.parameters()).device
    # The kernels' numerics are part of the measurement: a different default kernel gets its own cache entry.
    kernels = {fmt: default_kernel(fmt, device).name for fmt in ("int8", "int4")}
    settings = {"calibration": calibration.settings, "calibration_fingerprint": calibration.fingerprint(),
                "device": device.type, "kernels": kernels,
                "precisions": list(precisions), "group_size": group_size, "hessian_samples": hessian_samples,
                "seed": seed, "units": units, "batch_size": batch_size}
    key = _cache_key(module, settings)
    path = cache_root(cache_dir) / "sensitivity" / f"{key}.json"
    if use_cache and path.is_file():
        logger.info("sensitivity table from cache %s", path)
        return SensitivityTable.from_json(path.read_text())

    was_training = module.training
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    module.eval()
    try:
        started = time.perf_counter()
        flips: dict[str, Any] = {}
        divergence, loss_delta, reference_s = _divergences(module, calibration, units, per_unit, group_size=group_size,
                                                           batch_size=batch_size, flips=flips)
        divergence_s = time.perf_counter() - started
        started = time.perf_counter()
        hessian = (unit_hessian_traces(module, calibration, units, n_samples=hessian_samples, seed=seed,
                                       batch_size=batch_size) if hessian_samples else {})
        hessian_s = time.perf_counter() - started
    finally:
        module.train(was_training)
        torch.set_num_threads(previous_threads)
    table = SensitivityTable(
        divergence=divergence,
        hessian=hessian,
        loss_delta=loss_delta,
        params={u: module.get_submodule(u).weight.numel() for u in units},
        perturbation={(u, p): weight_perturbation(module.get_submodule(u), p, group_size=group_size)
                      for u in units for p in per_unit[u]},
        metric={"tokens": "kl_next_token", "embeddings": "embedding_cosine_loss"}.get(calibration.kind, "kl_logits"),
        key=key, settings=settings,
        seconds={"reference": reference_s, "divergence": divergence_s, "hessian": hessian_s},
        margin_mse=flips.get("margin_mse", {}), margins=flips.get("margins", []), correct=flips.get("correct", []),
    )
    logger.info("sensitivity of %d units x %d precisions in %.1f s (+ Hessian %.1f s)", len(units),
                len(precisions), divergence_s, hessian_s)
    if use_cache:
        _write_atomic(path, table.to_json())
    return table


def _cache_key(module: nn.Module, settings: Mapping[str, Any], *, version: int = TABLE_VERSION) -> str:
    """A measured table's cache key: architecture, weight values, settings, table version and torch (the KV
    table in ``sensitivity_kv`` shares it with its own version)."""
    blob = json.dumps({"model": model_fingerprint(module), "weights": weights_hash(module), "settings": settings,
                       "version": version, "torch": torch.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties), with numpy alone; NaN if either is constant."""
    import numpy as np

    def ranks(x: Sequence[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=float)
        order = np.argsort(arr, kind="mergesort")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=float)
        for value in np.unique(arr):  # ties share their average rank
            tied = arr == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) != len(rb) or len(ra) < 2:
        raise InvalidArgumentError(f"spearman needs two sequences of equal length >= 2, got {len(ra)} and {len(rb)}.")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")
