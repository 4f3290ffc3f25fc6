"""The front as TensorBoard HParams sessions a person can act on: one per plan, named by its id.

Sessions: every front member and every baseline (the unmodified model included), each a run
``tb/front/<plan id>`` holding a session start (``hparams_pb``) and its objectives as scalars. No
experiment summary is written: TensorBoard then builds the HParams table from the union of the sessions
of every run under the logdir, so several sweeps in one logdir all keep their columns (with an
experiment summary per run, the first one found wins) and a ``Sweep`` column tells them apart.

Columns (hparams): first one column per knob, ``Knob precision`` = ``int8 x12, bf16 x6`` (the plan's
choices of that knob and how many modules take each, most first), then ``Origin`` (``baseline:…``, ``nsga2``,
``markov`` …), ``Pareto front``, ``Plan id`` (what ``autosurgeon front RUN --plan ID`` takes), ``Power`` (cap
and mode, when the sweep had one), ``Sweep``; then one numeric column per knob value (``precision=int8`` = the
number of modules at int8, ``placement=cpu<-disk`` …), for the parallel-coordinates view; bookkeeping columns
(eval, generation, bytes per tier) start with ``~``. TensorBoard orders the columns that differ by name
(``(not differs, name)`` in its backend) and ticks only the first five by default (its HParams dashboard:
``Math.min(5, …)``; ``TENSORBOARD_CHECK.md``), so the ``Knob …`` columns, named to sort first, are the ones
ticked by default (with fewer than five knobs, ``Origin`` and ``Pareto front`` next). The row's name is
``<sweep>/<plan id>`` whatever is ticked.
Metrics: each objective in display units with how it was obtained, under a group named after the sweep, e.g.
``plan a/latency ms [estimated]``, ``plan a/memory MiB [measured]``, ``plan a/energy mJ [estimated]`` for sweep
``a``: TensorBoard's HParams read them as scalars, so they also appear in the Scalars dashboard, where the part
before the first ``/`` is the group: each sweep's plans form their own collapsible ``plan <sweep>`` group (three
charts, one point per plan), apart from every other sweep's and from the sweeps' ``front/`` curves (which share
their charts on purpose: hypervolume per evaluation, sweep against sweep). The price: sweeps sharing a logdir
have their own metric columns in the HParams table (a row of sweep ``a`` is blank under ``plan b/…``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.reporting.front_files import plan_summary

# objective -> (unit, factor from the record's SI value, the Metrics field whose label says how it was obtained)
UNITS = {"latency": ("ms", 1e3, "latency_s"), "prefill": ("ms", 1e3, "prefill_s"),
         "energy": ("mJ", 1e3, "energy_j"), "quality": ("%", 100.0, "quality_loss"),
         "throughput": ("-tokens/s", 1.0, "tokens_per_s")}


METRIC_GROUP = "plan"  # the per-plan metrics' tag prefix: one group in the Scalars dashboard
KNOB_COLUMN = "Knob "  # sorts before Origin, Pareto front, Plan id, Power, Sweep: the default-ticked columns


def metric_group(sweep: str) -> str:
    """The Scalars group of one sweep's per-plan metrics: ``plan <sweep>`` (``plan`` without a name); a ``/`` in
    the name would start a group of its own, so it becomes ``_``."""
    name = " ".join(sweep.replace("/", "_").split())
    return f"{METRIC_GROUP} {name}" if name else METRIC_GROUP


def metric_tag(name: str, record: Mapping[str, Any], sweep: str = "") -> tuple[str, float]:
    """``("plan <sweep>/latency ms [estimated]", factor)``: the scalar tag of objective ``name`` in ``sweep``'s
    group (``metric_group``) and its unit factor."""
    labels = (record.get("metrics", {}).get("_data", record.get("metrics", {})) or {}).get("labels", {})
    if name.startswith("memory"):
        unit, factor, field = "MiB", 1.0 / 2**20, "peak_bytes"
    else:
        unit, factor, field = UNITS.get(name, ("", 1.0, name))
    how = labels.get(field, "estimated" if not labels else "?")
    return f"{metric_group(sweep)}/{name} {unit} [{how}]".replace("  ", " "), factor


def session_hparams(record: Mapping[str, Any], *, sweep: str, on_front: bool,
                    power: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hparams of one session (module docstring: columns)."""
    from experiments.sweep.ids import origin, record_id

    hp: dict[str, Any] = {"Origin": origin(record), "Plan id": record_id(record), "Sweep": sweep,
                          "Pareto front": bool(on_front)}
    if power:
        hp["Power"] = f"{float(power['power_cap_w']):g} W cap, mode {power.get('power_mode')}"
    choices: dict[str, list[tuple[str, int]]] = {}
    for key, value in plan_summary(record["plan"], record.get("metrics")).items():
        knob, sep, choice = key.partition(":")
        if sep and knob not in ("bytes",):
            hp[f"{knob}={choice}"] = value
            choices.setdefault(knob, []).append((choice, int(value)))
        else:
            hp[f"~{key}"] = value
    for knob, counts in choices.items():
        hp[f"{KNOB_COLUMN}{knob}"] = ", ".join(f"{c} x{n}" for c, n in sorted(counts, key=lambda cn: (-cn[1], cn[0])))
    hp["~eval"] = int(record.get("eval", -1))
    hp["~generation"] = int(record.get("generation", -1) if record.get("generation") is not None else -1)
    return hp


def write_sessions(front_dir: Path, *, names: Sequence[str], records: Sequence[Mapping[str, Any]],
                   front_idx: Sequence[int], sweep: str, power: Mapping[str, Any] | None = None) -> list[str]:
    """One session per front member and baseline under ``front_dir/<plan id>``; returns the run names."""
    from tensorboard.plugins.hparams import summary_v2 as hp_api
    from torch.utils.tensorboard import SummaryWriter

    from experiments.sweep.ids import is_baseline, record_id

    front = set(front_idx)
    chosen = [i for i in range(len(records)) if i in front or is_baseline(records[i])]
    # The same columns in every session (a knob value a plan lacks is 0), so the parallel axes line up.
    sessions = [session_hparams(records[i], sweep=sweep, on_front=i in front, power=power) for i in chosen]
    keys: list[str] = []
    for s in sessions:
        keys.extend(k for k in s if k not in keys)
    runs = []
    for i, hp in zip(chosen, sessions):
        full = {k: hp.get(k, "-" if k.startswith(KNOB_COLUMN) else 0) for k in keys}  # "-": the plan lacks the knob
        run = record_id(records[i])
        with SummaryWriter(log_dir=str(Path(front_dir) / run)) as writer:
            writer.file_writer.add_summary(hp_api.hparams_pb(full, trial_id=f"{sweep}/{run}", start_time_secs=0))
            for name, value in zip(names, records[i]["objectives"]):
                tag, factor = metric_tag(name, records[i], sweep)
                writer.add_scalar(tag, float(value) * factor, 0)
        runs.append(run)
    return runs


def write_power_summary(folder: Path, text: str, metrics: Mapping[str, float]) -> None:
    """A sweep's power cap and mode as a text summary and its front's figures under the cap as scalars, in
    ``folder``: no HParams session (a session there would be a table row without a plan; every plan's row has
    the ``Power`` column instead)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_text("power/cap", text, 0)
        for tag, value in metrics.items():
            writer.add_scalar(tag, float(value), 0)


__all__ = ["KNOB_COLUMN", "METRIC_GROUP", "metric_group", "metric_tag", "session_hparams", "write_power_summary", "write_sessions"]
