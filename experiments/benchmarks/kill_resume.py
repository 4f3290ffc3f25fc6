"""kill -9 at random points, then resume: a sweep and a training run must end equal to uninterrupted ones.

    python -m experiments.benchmarks.kill_resume --trials 20 --out experiments/benchmarks/results/kill_resume

For each kind (``sweep``, ``train``) one uninterrupted run is made first (after a warm-up run that trains and
caches the zoo model), then ``--trials`` runs, each a process forked from this one (which imported everything
once, so a run costs no start-up), sent SIGKILL at a random point — after a uniformly drawn number of units on
disk (sweep records, or training checkpoints; 0 means during set-up) plus a uniform delay of up to two units'
time, by a seeded generator — and restarted the way a user would: ``--resume`` when the folder holds a
started run, ``--overwrite`` when the kill came before anything was recorded (a restart may be killed again:
``--kills`` per trial), then once more to completion. The result is compared with the uninterrupted one:

* sweep (``autosurgeon sweep`` through the CLI, NSGA-II, analytic evaluator on a paper H100): every record's
  ``eval``, ``x``, ``objectives``, ``feasible``, ``algo`` and ``generation`` equal, eval ids 0..N-1 each once
  (0 lost, 0 duplicated), status ``complete``;
* train (``agents.ppo.train`` in a child process, digits-cnn, analytic): every tensor of
  ``policy.safetensors`` bit-equal and policy.json's ``history`` and ``obs_stats`` equal.

Also checked after every kill and restart: no ``*.tmp`` file left in the folder. Writes ``<out>.json`` (every
trial: delays, what was on disk at each kill, restarts, verdict) and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SWEEP = ["tiny-llama-test", "--device", "h100-80gb", "--evaluator", "analytic", "--algo", "nsga2", "--seed", "1",
         "--pop-size", "8", "--no-baselines"]
TRAIN = dict(device="h100-80gb", models=["digits-cnn"], evaluator="analytic", seed=3, n_envs=2,
             checkpoint_every=64, hv_every=128, hv_preferences=2)
RECORD_KEYS = ("eval", "x", "objectives", "feasible", "algo", "generation")


def _env(cache: Path) -> dict[str, str]:
    """The environment the children run in: the shared zoo/sensitivity cache (trained once, then reused)."""
    return {**os.environ, "AUTOSURGEON_CACHE": str(cache)}


def sweep_job(out: Path, budget: int, mode: str | None) -> Any:
    """The sweep as a user types it (CLI, in the forked child)."""
    extra = {"resume": ["--resume"], "overwrite": ["--overwrite"], None: []}[mode]
    argv = ["sweep", *SWEEP, "--budget-evals", str(budget), "--out", str(out), "--json", *extra]

    def job() -> int:
        from autosurgeon.cli import main as cli

        return cli(argv)
    return job


def train_job(out: Path, timesteps: int, mode: str | None) -> Any:
    def job() -> int:
        from agents.ppo import PPOSettings, train

        train(timesteps=timesteps, out=out, resume=mode == "resume", overwrite=mode == "overwrite",
              settings=PPOSettings(n_steps=32, batch_size=32, n_epochs=1), **TRAIN)
        return 0
    return job


def _progress(kind: str, out: Path) -> int:
    """Units done on disk: sweep records, or training checkpoints."""
    if kind == "sweep":
        evals = out / "evals.jsonl"
        return len(evals.read_bytes().splitlines()) if evals.is_file() else 0
    ckpts = out / "checkpoints"
    return sum(p.name.startswith("step_") for p in ckpts.iterdir()) if ckpts.is_dir() else 0


def run_child(job: Any, *, kill_at: tuple[str, Path, int, float] | None = None) -> tuple[int, float]:
    """Run ``job`` in a forked child (the parent has imported everything: no start-up cost per run).

    ``kill_at = (kind, folder, units, delay)``: SIGKILL the child ``delay`` s after ``units`` units of progress
    are on disk (None: let it finish; a failure raises). Returns (exit status, seconds); -9 when killed."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            code = int(job() or 0)
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    reached: float | None = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if kill_at is not None:
            kind, folder, units, delay = kill_at
            now = time.perf_counter()
            if reached is None and _progress(kind, folder) >= units:
                reached = now
            if reached is not None and now - reached >= delay:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                break
        time.sleep(0.01)
    if kill_at is None and code != 0:
        raise RuntimeError(f"the uninterrupted child exited with {code}")
    return code, time.perf_counter() - started


def _started(kind: str, out: Path) -> bool:
    if kind == "sweep":
        return (out / "config.json").is_file()
    return (out / "checkpoints").is_dir() and any(p.name.startswith("step_") for p in (out / "checkpoints").iterdir())


def _on_disk(kind: str, out: Path) -> dict[str, Any]:
    if not out.exists():
        return {"folder": False}
    if kind == "sweep":
        evals = out / "evals.jsonl"
        n = len(evals.read_bytes().splitlines()) if evals.is_file() else 0
        return {"folder": True, "config": (out / "config.json").is_file(), "records": n}
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
    return {"folder": True, "checkpoints": ckpts, "policy": (out / "policy.safetensors").is_file()}


def _temps(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp")) if out.exists() else []


def _sweep_result(out: Path) -> tuple[list[dict[str, Any]], str]:
    records = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines() if line.strip()]
    status = json.loads((out / "summary.json").read_text())["status"]
    return [{k: r[k] for k in RECORD_KEYS} for r in records], status


def _train_result(out: Path) -> tuple[dict[str, Any], Any]:
    from safetensors.torch import load_file

    meta = json.loads((out / "policy.json").read_text())["_data"]
    return load_file(str(out / "policy.safetensors")), (meta["history"], meta["obs_stats"], meta["timesteps"])


def same_training(a: tuple[dict[str, Any], Any], b: tuple[dict[str, Any], Any]) -> bool:
    import torch

    (wa, ma), (wb, mb) = a, b
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa) and ma == mb


def trial(kind: str, out: Path, size: int, rng: random.Random, units: int, per_unit: float, kills: int,
          reference: Any) -> dict[str, Any]:
    job = sweep_job if kind == "sweep" else train_job
    events: list[dict[str, Any]] = []
    mode: str | None = None
    for _ in range(kills):
        target, delay = rng.randrange(units), rng.uniform(0.0, 2 * per_unit)
        code, seconds = run_child(job(out, size, mode), kill_at=(kind, out, target, delay))
        events.append({"kill_after_units": target, "then_s": round(delay, 3), "ran_s": round(seconds, 2),
                       "exit": code, "on_disk": _on_disk(kind, out), "temps_left": _temps(out)})
        if code != -signal.SIGKILL:
            break
        mode = "resume" if _started(kind, out) else ("overwrite" if out.exists() else None)
    final = "resume" if _started(kind, out) else ("overwrite" if out.exists() else None)
    code, seconds = run_child(job(out, size, final))
    temps = _temps(out)
    if kind == "sweep":
        records, status = _sweep_result(out)
        ref_records, _ = reference
        ids = [r["eval"] for r in records]
        equal = records == ref_records and status == "complete" and ids == list(range(size))
        detail = {"records": len(records), "status": status, "duplicates": len(ids) - len(set(ids)),
                  "lost": len(set(range(size)) - set(ids))}
    else:
        equal = same_training(_train_result(out), reference)
        detail = {}
    return {"events": events, "final_s": round(seconds, 2), "equal": bool(equal and not temps),
            "temps_left_at_end": temps, **detail}


def run_kind(kind: str, root: Path, *, trials: int, size: int, seed: int, kills: int,
             on_trial: Any = None) -> dict[str, Any]:
    job = sweep_job if kind == "sweep" else train_job
    run_child(job(root / f"{kind}-warm", size, None))  # trains/caches the zoo model and tables first
    ref_dir = root / f"{kind}-uninterrupted"
    _, wall = run_child(job(ref_dir, size, None))
    reference = _sweep_result(ref_dir) if kind == "sweep" else _train_result(ref_dir)
    units = _progress(kind, ref_dir)
    rng = random.Random(seed)
    rows = []
    for t in range(trials):
        out = root / f"{kind}-{t:02d}"
        rows.append(trial(kind, out, size, rng, units, wall / max(units, 1), kills, reference))
        shutil.rmtree(out, ignore_errors=True)
        result = {"kind": kind, "size": size, "units": units, "uninterrupted_s": round(wall, 2), "trials": rows,
                  "equal": sum(r["equal"] for r in rows), "n": len(rows)}
        if on_trial is not None:  # results so far on disk after every trial: a long run stopped early keeps them
            on_trial(result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kinds", default="sweep,train")
    p.add_argument("--sweep-evals", type=int, default=120)
    p.add_argument("--train-steps", type=int, default=512)
    p.add_argument("--kills", type=int, default=2, help="kills per trial before the final uninterrupted restart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md (after every trial)")
    p.add_argument("--cache", default=None, help="zoo/sensitivity cache to reuse (default: a fresh one)")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    os.environ.update(_env(Path(args.cache) if args.cache else root / "cache"))
    import agents.ppo  # noqa: F401  (imported once here; each forked child starts warm)
    import autosurgeon.cli  # noqa: F401
    import experiments.sweep  # noqa: F401
    load = os.getloadavg()
    results: dict[str, Any] = {}

    def write(partial: dict[str, Any] | None = None) -> None:
        if not args.out:
            return
        snapshot = {**results, **({partial["kind"]: partial} if partial else {})}
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
                  "cpus": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg(),
                  "settings": vars(args), "results": snapshot}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(report))

    try:
        for kind in args.kinds.split(","):
            size = args.sweep_evals if kind == "sweep" else args.train_steps
            results[kind] = run_kind(kind, root, trials=args.trials, size=size, seed=args.seed, kills=args.kills,
                                     on_trial=write)
            r = results[kind]
            print(f"{kind}: {r['equal']}/{r['n']} killed-and-resumed runs equal the uninterrupted one "
                  f"(uninterrupted {r['uninterrupted_s']} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write()
    return 0 if all(r["equal"] == r["n"] for r in results.values()) else 1


def render(report: dict[str, Any]) -> str:
    lines = [f"# kill -9 and resume ({report['date']})", "",
             f"{report['platform']}, {report['cpus']} CPUs, load average {report['loadavg_start'][0]:.2f} at the "
             f"start and {report['loadavg_end'][0]:.2f} at the end. Method: `experiments/benchmarks/kill_resume.py` "
             "(module docstring); each kill after a uniformly drawn number of units on disk (records or "
             "checkpoints, 0 = during set-up) plus a uniform delay of up to two units' time, seeded "
             f"{report['settings']['seed']}, up to {report['settings']['kills']} kills per trial; runs are forked "
             "from one warm parent process.", "",
             "| run | size | trials | equal to uninterrupted | kills that hit mid-run | uninterrupted wall |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, r in report["results"].items():
        hits = sum(e["exit"] == -9 for t in r["trials"] for e in t["events"])
        unit = "evaluations" if kind == "sweep" else "timesteps"
        planned = report["settings"]["trials"]
        if r["n"] < planned:
            lines.insert(4, f"**Partial: {kind} stopped after {r['n']} of {planned} trials.**\n")
        lines.append(f"| {kind} | {r['size']} {unit} | {r['n']} | {r['equal']}/{r['n']} | {hits} | "
                     f"{r['uninterrupted_s']} s |")
    lines += ["", "What was on disk at each kill (sweep: records written; train: checkpoints), per trial, is in the "
              "JSON beside this file."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
