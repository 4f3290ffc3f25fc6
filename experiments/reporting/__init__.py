"""Sweep outputs: the front as files, plots and TensorBoard events (issue 5, item 5).

Contract (the sweep engine calls exactly this):

``write_run_outputs(run_dir, *, config, records, front_idx, baselines=None) -> dict[str, Path]``
    ``records``: one dict per evaluation, ``{"eval": int, "algo": str, "generation": int, "x": list[int],
    "plan": Plan.to_dict(), "metrics": Metrics.to_dict(), "objectives": [float, ...] (minimised, in the order
    of config["objectives"]), "feasible": bool}``; ``front_idx``: indices into ``records`` of the front;
    ``config``: the sweep's config, with at least ``"objectives"`` (names; ``"quality"`` is appended when
    ``config["quality"] == "objective"``, or give ``"objective_names"`` outright) and ideally ``"reference_point"``,
    ``"model"``, ``"device"`` (``"knobs"`` too: ``agents.markov.fit_from_runs`` rebuilds the space from them);
    ``baselines``: name -> records of that baseline (marked on the plots, kept in front.json).
    Writes ``run_dir/front.csv``, ``run_dir/front.json``, ``run_dir/plots/front.png`` (+ one PNG per pair of
    objectives) and ``run_dir/tb/front/`` (image, projector, one HParams session per front member and baseline,
    named by plan id; see
    ``experiments.reporting.tensorboard``). Safe to call again (each call rewrites these outputs).
    Returns ``{"front_csv", "front_json", "front_png", "plot:<a>_vs_<b>"..., "tb_front", "projector_config"}``.

``TensorBoardRecorder(log_dir, *, purge_step=None)``
    ``.on_generation(gen, *, hypervolume, best, n_evals)`` logs ``front/hypervolume``,
    ``front/best_<objective>`` and ``front/evaluations`` at step ``gen``; ``.close()``.
    A sweep uses ``log_dir = run_dir / "tb"`` (the front's events go to ``run_dir/tb/front``).
"""
from __future__ import annotations

from pathlib import Path

from experiments.reporting.front_files import check_inputs, read_front, write_front_files
from experiments.reporting.tensorboard import TensorBoardRecorder, write_front_events


def write_run_outputs(run_dir: Path, *, config: dict, records: list[dict], front_idx: list[int],
                      baselines: dict[str, list[dict]] | None = None) -> dict[str, Path]:
    """Write the front's CSV/JSON, PNG plots and TensorBoard events under ``run_dir`` (module docstring)."""
    from experiments.reporting.plots import plot_front

    run_dir = Path(run_dir)
    names = check_inputs(config, records, front_idx)
    out: dict[str, Path] = {}
    out.update(write_front_files(run_dir, config=config, records=records, front_idx=front_idx, baselines=baselines))
    title = " on ".join(str(config[k]) for k in ("model", "device") if config.get(k))
    out.update(plot_front(run_dir / "plots", names=names, records=records, front_idx=front_idx,
                          baselines=baselines, title=title))
    out.update(write_front_events(run_dir / "tb", names=names, records=records, front_idx=front_idx,
                                  figure_png=out["front_png"], sweep=str(config.get("name") or run_dir.name),
                                  power=config.get("power")))
    return out



__all__ = ["TensorBoardRecorder", "read_front", "write_run_outputs"]
