"""run_sweep: one sweep from a SweepConfig into ``runs/NAME/`` — evaluator, reference, algorithm, baselines, summary.

Resume by replay: every finished evaluation is in ``evals.jsonl`` before the algorithm sees it. On
``resume`` the records are preloaded into the :class:`~experiments.sweep.problem.Archive`, and the algorithm
starts again from the same seed; being deterministic given the same answers, it proposes the same plans,
which the archive answers from the records without measuring (``replayed`` in the summary), and then goes
on where the interrupted attempt stopped, until the same ``budget_evals``. The evaluator's own
``EvaluationCache`` (``eval_cache.jsonl``) also persists, so a plan measured but not yet recorded when the
process died is not measured again either. Optuna studies live in memory by default (replay makes a
stored study unnecessary, and SQLite cost ~1 s per trial on this shared disk); ``extra = {"optuna_storage":
"sqlite"}`` writes them to ``optuna.db``, one study per attempt (``<algo>-attempt<k>``), for inspection.

Power cap (``config.power_cap_w``, ``autosurgeon.hardware.power_cap.resolve_power_cap``): on a paper profile the
evaluator is built on the profile in the fastest power mode within the cap; on a measured one the cap is a
constraint on each plan's mean power. Either way the cap, the mode evaluated in and how the cap applied go
into ``summary.json`` (``power``), the config that ``front.json`` carries and, with TensorBoard on, every plan's
HParams row (``Power``) and ``tb/power`` (the cap and mode as text; hypervolume and front size as scalars).

Scale-out (``cluster``: ``experiments.sweep.dask_eval.SweepCluster``): plans are measured on Dask workers
and recorded here, by this process alone, in the order a serial sweep records them
(``experiments.sweep.distributed``); ``summary.json`` gets a ``cluster`` entry (plans per worker, devices).
``optuna_storage`` puts the Optuna algorithms' study in a database that other processes may join.

Outputs (CSV/JSON front, plots, TensorBoard) come from ``experiments.reporting`` when it is installed; a
missing module is noted in the summary, never fatal to a sweep.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from experiments.sweep import registry
from experiments.sweep.config import SweepConfig
from experiments.sweep.hypervolume import front_indices, hv_curve, hypervolume
from experiments.sweep.ids import is_baseline
from experiments.sweep.outcome import front_outcome
from experiments.sweep.problem import Archive
from experiments.sweep.registry import SearchContext
from experiments.sweep.seeds import Seed, baseline_seeds, evaluate_seeds, initial_vectors, markov_seeds
from experiments.sweep.store import BASELINES, CONFIG, EVAL_CACHE, REFERENCE, SUMMARY, RunStore

logger = get_logger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` returns: the run folder, every record, the front's positions and the summary."""

    run_dir: Path
    records: list[dict[str, Any]]
    front: list[int]
    summary: dict[str, Any]
    baselines: dict[str, list[dict[str, Any]]]


def power_cap_for(config: SweepConfig, profile: Any) -> Any:
    """The config's power cap resolved on ``profile`` (``autosurgeon.hardware.power_cap.PowerCap``), or None without one."""
    if config.power_cap_w is None:
        return None
    from autosurgeon.hardware.power_cap import resolve_power_cap

    return resolve_power_cap(profile, config.power_cap_w, argument="--power-cap")


def build_evaluator(config: SweepConfig, *, cache_path: str | Path | None = None,
                    cache_dir: str | None = None) -> Any:
    """The evaluator the config names, on its model, device and SearchSpace (knobs), with a persistent cache.

    With ``power_cap_w`` on a paper profile the evaluator is built on the profile in the mode the cap
    selects (``power_cap_for``), so its rates and energy are that mode's."""
    from autosurgeon.evaluate import EvaluationCache
    from autosurgeon.evaluate.registry import get as evaluator_kind
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model

    profile = resolve_profile(config.device)
    kind = evaluator_kind(config.evaluator)
    if kind.measures_here and not profile.measured:
        raise InvalidArgumentError(
            f"`--evaluator {config.evaluator}` measures on this machine, but `--device {config.device}` is a "
            "profile on paper; use `--device local`, or `--evaluator analytic` for a preset.")
    cap = power_cap_for(config, profile)
    if cap is not None:
        profile = cap.profile
    from autosurgeon.models.shape_specs import SHAPES

    # A shape model (7B/70B/Mixtral) has no weights to read and may not fit this host: the analytic evaluator
    # prices it from its architecture alone, on the meta device.
    on_meta = config.evaluator == "analytic" and config.model in SHAPES
    if on_meta and config.needs_quality:
        raise InvalidArgumentError(f"{config.model} is an architecture without trained weights: its quality cannot be "
                                   "measured; sweep it with quality = 'none' (in a `--config` file: "
                                   "{\"quality\": \"none\"}).")
    loaded = load_model(config.model, device="meta" if on_meta else "cpu", cache_dir=cache_dir)
    space = SearchSpace.build(loaded, profile, knobs=config.knobs)
    sensitivity = None
    if config.needs_quality and kind.cheap:  # the cheap evaluators' quality proxy reads a sensitivity table
        from autosurgeon.quality.sensitivity import measure_sensitivity

        sensitivity = measure_sensitivity(loaded, cache_dir=cache_dir)
    cache = EvaluationCache(cache_path)
    return kind.build(loaded, profile, space=space, cache=cache, sensitivity=sensitivity,
                      quality=config.quality_settings() if config.needs_quality else None)


def warm_start_vectors(path: str, space: Any, n: int, seed: int) -> list[np.ndarray]:
    """Initial population from a Markov placement model JSON (``agents.markov``)."""
    try:
        from agents.markov import MarkovPlacementModel
    except ImportError as exc:
        raise AutoSurgeonError(f"`--warm-start` needs agents.markov.MarkovPlacementModel, which is not available "
                               f"in this checkout ({exc}); drop --warm-start to start from random plans.") from None
    if not Path(path).is_file():
        raise InvalidArgumentError(f"`--warm-start` {path!r} is not a file; give a Markov model JSON "
                                   "(agents.markov.MarkovPlacementModel.save).")
    model = MarkovPlacementModel.load(path)
    # A stream of its own, so the warm start does not shift NSGA-II's draws.
    return [np.asarray(x, dtype=np.int64) for x in model.sample(space, n, np.random.default_rng([seed, 1]))]


def scales_for(config: SweepConfig, reference: Any) -> list[float]:
    """The normaliser: the unmodified model's objectives; quality by ``config.quality_norm``."""
    out = []
    for name in config.objective_names:
        if name == "quality":
            out.append(config.quality_norm)
            continue
        value = abs(float(reference.objective(name)))
        if not value > 0:
            raise InvalidArgumentError(f"objective {name!r} of the unmodified model is {value}; it cannot be the "
                                       "normaliser. Drop the objective from the config.")
        out.append(value)
    return out


def _best(records: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, float]:
    feasible = [r["objectives"] for r in records if r["feasible"]]
    if not feasible:
        return {}
    arr = np.asarray(feasible, dtype=np.float64)
    return {n: float(arr[:, k].min()) for k, n in enumerate(names)}


def _tensorboard(run_dir: Path) -> tuple[Any, str | None]:
    try:
        from experiments.reporting import TensorBoardRecorder
    except ImportError as exc:
        return None, f"TensorBoard scalars skipped: experiments.reporting.TensorBoardRecorder unavailable ({exc})"
    return TensorBoardRecorder(run_dir / "tb"), None  # beside tb/front, as the reporting contract lays out


def run_sweep(config: SweepConfig, out: str | Path, *, resume: bool = False, evaluator: Any = None,
              progress: Callable[[int, int, dict[str, Any]], None] | None = None, outputs: bool = True,
              tensorboard: bool = True, cache_dir: str | None = None, overwrite: bool = False, cluster: Any = None,
              optuna_storage: str | None = None, study_name: str | None = None) -> SweepResult:
    """Run (or continue) the sweep ``config`` into the folder ``out`` (module docstring: files, resume).

    ``out`` is locked for the run (``autosurgeon.files.runfolder``: a second sweep on it fails at once, naming the
    first); a sweep that fails before its first record leaves the folder as it found it.

    Args:
        config: the sweep.
        out: the run folder; must be empty (or absent) unless ``resume`` or ``overwrite``.
        resume: continue the sweep in ``out`` (its config must match ``config`` except for the budget).
        overwrite: empty ``out`` first (under the lock).
        evaluator: an evaluator to use instead of building one from the config (tests; its space is the sweep's).
        progress: called after each new evaluation with ``(done, budget, record)``.
        outputs: write the reporting outputs (front CSV/JSON, plots) at the end.
        tensorboard: per-generation TensorBoard scalars.
        cache_dir: zoo and sensitivity cache folder.
        cluster: a ``dask_eval.SweepCluster``: plans are measured on its Dask workers, recorded here.
        optuna_storage: a database URL for the Optuna algorithms' study (PostgreSQL, any SQLAlchemy URL); with
            it the study ``study_name`` (default ``<out folder name>-<algo>``) is joined if it exists.
        study_name: the shared study's name (with ``optuna_storage``).
    """
    from autosurgeon.files.runfolder import run_folder

    with run_folder(out, resume=resume, overwrite=overwrite, what="sweep",
                    keep=lambda folder: bool(RunStore(folder).records())):
        return _run_sweep(config, out, resume=resume, evaluator=evaluator, progress=progress, outputs=outputs,
                          tensorboard=tensorboard, cache_dir=cache_dir, cluster=cluster,
                          optuna_storage=optuna_storage, study_name=study_name)


def _run_sweep(config: SweepConfig, out: str | Path, *, resume: bool, evaluator: Any,
               progress: Callable[[int, int, dict[str, Any]], None] | None, outputs: bool,
               tensorboard: bool, cache_dir: str | None, cluster: Any, optuna_storage: str | None,
               study_name: str | None) -> SweepResult:
    started = time.perf_counter()
    if optuna_storage is not None and not config.algo.startswith("optuna"):
        raise InvalidArgumentError(f"`--storage` holds an Optuna study; `--algo {config.algo}` uses none. Use "
                                   "--algo optuna-nsga2 or optuna-tpe, or drop --storage.")
    store = RunStore(out)
    store.open(resume=resume)
    attempts = 1
    previous_wall = 0.0
    if resume:
        old = SweepConfig.from_dict(store.read_json(CONFIG))
        diff = config.differences(old)
        if diff:
            raise InvalidArgumentError(
                f"`--resume`: settings {diff} differ from the run in {str(store.dir)!r} (e.g. {diff[0]} "
                f"{old.to_dict()[diff[0]]!r} there, {config.to_dict()[diff[0]]!r} now); only the budget may change. "
                "Drop those options or start a new --out.")
        if config.budget_evals is None:  # the budget the first attempt resolved
            config = config.replace(budget_evals=old.budget_evals)
        if store.path(SUMMARY).is_file():
            prev = store.read_json(SUMMARY)
            attempts = int(prev.get("attempts", 1)) + 1
            previous_wall = float(prev.get("wall_s_total", 0.0))
    if evaluator is None:
        evaluator = build_evaluator(config, cache_path=store.path(EVAL_CACHE), cache_dir=cache_dir)
    if cluster is not None:
        evaluator = cluster.wrap(evaluator, config, cache_dir=cache_dir)
    cap = _checked_cap(config, evaluator)
    store.write_json(CONFIG, config.to_dict())  # after the evaluator: a refused setup leaves the folder empty
    space = evaluator.space
    # The space searched travels with the run, so the Markov model refits from it without re-measuring.
    store.path("space.json").write_text(space.to_json())
    measured_before = evaluator.evaluated
    names = config.objective_names
    if store.path(REFERENCE).is_file():
        from autosurgeon.metrics import Metrics

        reference = Metrics.from_dict(store.read_json(REFERENCE)["metrics"])
    else:
        reference = evaluator.evaluate(space.default_vector())
    scales = scales_for(config, reference)
    store.write_json(REFERENCE, {"metrics": reference.to_dict(), "objectives": list(names), "scales": scales,
                                 "reference_point": list(config.reference_point),
                                 "normaliser": "objective / unmodified model's objective on the same evaluator"
                                 + (f"; quality / {config.quality_norm}" if "quality" in names else "")})

    records = store.records()
    store.rewrite_records(records)  # drops a torn last line before new appends
    preloaded = len(records)
    done = {"n": preloaded}
    auto_budget = config.budget_evals is None
    notes: list[str] = []
    recorder, note = _tensorboard(store.dir) if tensorboard else (None, None)
    if note:
        notes.append(note)
        logger.warning("%s", note)
    hv_tracker = _HvTracker(config.reference_point, scales)

    def on_record(record: dict[str, Any]) -> None:
        done["n"] += 1
        hv = hv_tracker.add(record)
        if recorder is not None:
            recorder.on_evaluation(done["n"], hypervolume=hv)
        if progress is not None:
            progress(done["n"], archive.budget if archive.budget < 10**9 else 0, record)

    archive = Archive(space, evaluator, objectives=names, scales=scales,
                      budget=10**9 if auto_budget else config.budget_evals,
                      quality=config.quality, max_quality_loss=config.max_quality_loss, store=store,
                      records=records, on_record=on_record, power_cap_w=config.power_cap_w)
    for r in archive.records:
        hv_tracker.add(r)

    def on_generation(gen: int, arch: Archive, new: int) -> None:
        if recorder is None or not new:  # replayed generations were logged by the attempt that measured them
            return
        recorder.on_generation(gen, best=_best(arch.records, names), n_evals=len(arch))

    status = "interrupted"
    algorithm = registry.get(config.algo)
    try:
        seed_list, skipped = _seeds(config, evaluator, space)
        notes.extend(skipped)
        t0, n0 = evaluator.seconds, evaluator.evaluated
        seed_records, seed_notes = evaluate_seeds(archive, seed_list)
        notes.extend(seed_notes)
        if auto_budget:
            n = evaluator.evaluated - n0
            rate = n / (evaluator.seconds - t0) if n and evaluator.seconds > t0 else evaluator.evaluations_per_second
            archive.budget = default_budget(rate, floor=len(archive) + config.pop_size)
            config = config.replace(budget_evals=archive.budget)
            store.write_json(CONFIG, config.to_dict())
            notes.append(f"budget: {archive.budget} evaluations, from the evaluator's speed "
                         f"({rate:.3g} evaluations/s on the seed plans; default_budget aims at "
                         f"{DEFAULT_BUDGET_SECONDS:g} s); --budget-evals N sets it")
        context = SearchContext(seed=config.seed, pop_size=config.pop_size,
                                initial=initial_vectors(archive, seed_records, config.reference_point),
                                on_generation=on_generation,
                                extra=config.extra, storage=None if config.extra.get("optuna_storage", "memory")
                                == "memory" else f"sqlite:///{(store.dir / 'optuna.db').resolve()}",
                                study_name=f"{config.algo}-attempt{attempts}")
        if optuna_storage is not None:  # a shared study: joined, not replaced (see agents.storage)
            from agents.storage import optuna_storage as open_storage
            from agents.storage import redact

            name = study_name or f"{store.dir.name}-{config.algo}"
            context = dataclasses.replace(context, storage=open_storage(optuna_storage), study_name=name,
                                          load_if_exists=True)
            notes.append(f"optuna study {name!r} in {redact(optuna_storage)} (shared: joined if it existed)")
        if not archive.exhausted:
            algorithm.run(archive, context)
        status = "complete" if archive.exhausted else "stalled"
    finally:
        if recorder is not None:
            recorder.close()
        summary = _summary(config, evaluator, archive, scales, reference, status=status, attempts=attempts,
                           wall_s=time.perf_counter() - started, previous_wall=previous_wall,
                           measured=evaluator.evaluated - measured_before, preloaded=preloaded, notes=notes,
                           power=None if cap is None else cap.to_dict())
        store.write_json(SUMMARY, summary)

    front = front_indices(archive.records)
    outcome, outcome_notes = front_outcome(archive.records, front, reference_point=config.reference_point,
                                           scales=scales)
    summary.update(outcome)
    for n in outcome_notes:
        logger.warning("%s", n)
    notes.extend(outcome_notes)
    baselines = _baseline_families(archive.records)
    store.write_json(BASELINES, {"families": baselines, "notes": [n for n in notes if "skipped" in n]})
    if outputs:
        try:
            from experiments.reporting import write_run_outputs
        except ImportError as exc:
            notes.append(f"front CSV/JSON and plots skipped: experiments.reporting.write_run_outputs unavailable "
                         f"({exc})")
        else:
            paths = write_run_outputs(store.dir, config={**config.to_dict(), "power": summary["power"]},
                                      records=archive.records, front_idx=front, baselines=baselines or None)
            summary["outputs"] = {k: str(v) for k, v in paths.items()}
    if cap is not None and tensorboard:
        _power_hparams(store.dir / "tb" / "power", config, summary, notes)
    summary["wall_s"] = time.perf_counter() - started
    summary["wall_s_total"] = previous_wall + summary["wall_s"]
    summary["notes"] = notes
    if cluster is not None:
        summary["cluster"] = evaluator.summary()
    store.write_json(SUMMARY, summary)
    return SweepResult(run_dir=store.dir, records=archive.records, front=front, summary=summary, baselines=baselines)


DEFAULT_BUDGET_SECONDS = 120.0


def default_budget(evals_per_s: float, *, seconds: float = DEFAULT_BUDGET_SECONDS, floor: int = 40,
                   ceiling: int = 400) -> int:
    """Evaluations worth ``seconds`` at ``evals_per_s``, in [floor, ceiling], rounded down to tens.

    A fast evaluator (analytic: hundreds per second) gets the ceiling, a runtime evaluator on a large
    model the floor; an unknown speed (nan) the floor."""
    floor = max(1, int(floor))
    if not (evals_per_s > 0):
        return floor
    n = int(evals_per_s * seconds) // 10 * 10
    return int(min(max(n, floor), max(ceiling, floor)))


def _seeds(config: SweepConfig, evaluator: Any, space: Any) -> tuple[list[Seed], list[str]]:
    """The plans evaluated before the search (``seeds``): baselines (or only the uniform ones), a warm start."""
    out: list[Seed] = []
    notes: list[str] = []
    if config.baselines or config.init_population == "uniform":
        out, notes = baseline_seeds(evaluator, knapsack_budgets=config.knapsack_budgets,
                                    max_quality_loss=config.max_quality_loss if config.quality == "constraint"
                                    else None, uniform_only=not config.baselines)
    if config.warm_start:
        out += markov_seeds(warm_start_vectors(config.warm_start, space, config.pop_size, config.seed))
    return out, notes


def _baseline_families(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{family: [records]}`` of the baseline records (what the plots mark and front.json keeps)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if is_baseline(r):
            out.setdefault(str(r.get("family") or "baseline"), []).append(r)
        for other in r.get("also", ()):  # a baseline whose plan an earlier seed had (uniform-float32 = unmodified)
            out.setdefault(other["family"], []).append({**r, "label": other["label"], "family": other["family"]})
    return out


class _HvTracker:
    """The hypervolume of the feasible records seen so far, recomputed only when a record joins the front."""

    def __init__(self, reference_point: Any, scales: Any) -> None:
        self.reference_point, self.scales = reference_point, scales
        self.points: list[list[float]] = []
        self.value = 0.0

    def add(self, record: dict[str, Any]) -> float:
        if record["feasible"]:
            p = [float(v) for v in record["objectives"]]
            if not any(all(a <= b for a, b in zip(q, p)) for q in self.points):
                self.points = [q for q in self.points if not all(a <= b for a, b in zip(p, q))] + [p]
                self.value = hypervolume(self.points, self.reference_point, scales=self.scales)
        return self.value


def _power_hparams(folder: Path, config: SweepConfig, summary: dict[str, Any], notes: list[str]) -> None:
    """The power cap and mode in TensorBoard (text and the front's figures under it), so the run says under which
    cap it was found; each plan's HParams row carries it too (``Power``)."""
    try:
        from experiments.reporting.hparams import write_power_summary
    except ImportError as exc:  # pragma: no cover - reporting ships with the sweep
        notes.append(f"power summary skipped: experiments.reporting unavailable ({exc})")
        return
    power = summary["power"]
    text = (f"sweep {config.name or folder.parent.parent.name}: power cap {float(power['power_cap_w']):g} W, mode "
            f"{power['power_mode']} ({float(power['mode_watts']):g} W{', derated' if power['derated'] else ''}) on "
            f"{power['device']}; evaluator {config.evaluator}, algo {config.algo}, seed {config.seed}")
    write_power_summary(folder, text, {"power/hypervolume": float(summary["hypervolume"]),
                                       "power/front_size": float(summary["front_size"])})


def _checked_cap(config: SweepConfig, evaluator: Any) -> Any:
    """The config's power cap on the evaluator's profile; refuses an evaluator built in another power mode."""
    cap = power_cap_for(config, evaluator.profile)
    if cap is None:
        return None
    from autosurgeon.hardware.power_cap import mode_key

    if cap.derated and mode_key(cap.profile) != mode_key(evaluator.profile):
        raise InvalidArgumentError(
            f"`--power-cap` {config.power_cap_w:g} W selects power mode {cap.mode.name!r} of {evaluator.profile.name!r}, "
            f"but the evaluator's profile is in mode {evaluator.profile.power_mode!r}; build the evaluator on "
            "profile.at_power_cap(power_cap_w) (build_evaluator does).")
    return cap


def _summary(config: SweepConfig, evaluator: Any, archive: Archive, scales: list[float], reference: Any, *,
             status: str, attempts: int, wall_s: float, previous_wall: float, measured: int, preloaded: int,
             notes: list[str], power: dict[str, Any] | None = None) -> dict[str, Any]:
    records = archive.records
    feasible = [r["objectives"] for r in records if r["feasible"]]
    at = sorted({n for n in config.hv_at if n <= len(records)} | ({len(records)} if records else set()))
    return {
        "name": config.name, "model": config.model, "algorithm": config.algo, "evaluator": config.evaluator,
        "seed": config.seed, "pop_size": config.pop_size, "warm_start": config.warm_start,
        "init_population": config.init_population,
        "device": evaluator.profile.name, "device_fingerprint": evaluator.profile.fingerprint,
        "device_measured": bool(evaluator.profile.measured),
        "status": status, "evaluations": len(records), "budget_evals": config.budget_evals,
        "feasible": len(feasible), "front_size": len(front_indices(records)),
        "objectives": list(config.objective_names), "quality": config.quality,
        "max_quality_loss": config.max_quality_loss,
        "power_cap_w": config.power_cap_w, "power": power,
        "hypervolume": hypervolume(feasible, config.reference_point, scales=scales),
        "hv_curve": {str(k): v for k, v in hv_curve(records, config.reference_point, scales, at).items()},
        "reference_point": list(config.reference_point),
        "normaliser": {"kind": config.normaliser, "scales": dict(zip(config.objective_names, scales)),
                       "reference_metrics": reference.summary()},
        "attempts": attempts, "replayed": archive.replayed, "preloaded": preloaded,
        "measured_this_attempt": measured,
        "wall_s": wall_s, "wall_s_total": previous_wall + wall_s,
        "evaluations_per_s": getattr(evaluator, "evaluations_per_second", None),
        "notes": list(notes),
    }


def load_run(run_dir: str | Path) -> tuple[SweepConfig, list[dict[str, Any]], dict[str, Any], Mapping[str, Any]]:
    """``(config, records, reference, summary)`` of a finished or interrupted run folder."""
    store = RunStore(run_dir)
    if not store.dir.is_dir():
        raise InvalidArgumentError(f"run folder {str(run_dir)!r} does not exist; give a folder written by "
                                   "`autosurgeon sweep --out`.")
    config = SweepConfig.from_dict(store.read_json(CONFIG))
    reference = store.read_json(REFERENCE)
    summary = store.read_json(SUMMARY) if store.path(SUMMARY).is_file() else {}
    return config, store.records(), reference, summary


__all__ = ["SweepResult", "build_evaluator", "load_run", "power_cap_for", "run_sweep", "scales_for",
           "warm_start_vectors"]
