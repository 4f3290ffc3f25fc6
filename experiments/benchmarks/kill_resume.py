"""kill -9 at random points, then resume: a sweep and a training run must end equal to uninterrupted ones.

    python -m experiments.benchmarks.kill_resume --trials 20 --out experiments/benchmarks/results/kill_resume

For each kind (``sweep``, ``train``) one uninterrupted run is made first (its wall time sets the range of kill
points), then ``--trials`` runs are each started as a separate process, sent SIGKILL after a delay drawn
uniformly from (0, wall time of the uninterrupted run + start-up) by a seeded generator, and restarted the way
a user would — ``--resume`` when the folder holds a started run, ``--overwrite`` when the kill came before
anything was recorded — until they finish (a restart may be killed again: ``--kills`` per trial). The result
is compared with the uninterrupted one:

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
import subprocess
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
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "AUTOSURGEON_CACHE": str(cache),
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def sweep_cmd(out: Path, budget: int, mode: str | None) -> list[str]:
    extra = {"resume": ["--resume"], "overwrite": ["--overwrite"], None: []}[mode]
    return [sys.executable, "-m", "autosurgeon", "sweep", *SWEEP, "--budget-evals", str(budget), "--out", str(out),
            "--json", *extra]


def train_cmd(out: Path, timesteps: int, mode: str | None) -> list[str]:
    code = ("import sys; from agents.ppo import PPOSettings, train; from experiments.benchmarks.kill_resume import TRAIN; "
            f"train(timesteps={timesteps}, out={str(out)!r}, resume={mode == 'resume'}, overwrite={mode == 'overwrite'}, "
            "settings=PPOSettings(n_steps=32, batch_size=32, n_epochs=1), **TRAIN)")
    return [sys.executable, "-c", code]


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


def run_child(cmd: list[str], env: dict[str, str], *, kill_after: float | None) -> tuple[int, float]:
    """Run ``cmd``; SIGKILL it after ``kill_after`` s (None: let it finish). Returns (return code, seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if kill_after is None:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}): {err.decode()[-800:]}")
        else:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, time.perf_counter() - started


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


def trial(kind: str, out: Path, env: dict[str, str], size: int, rng: random.Random, span: float, kills: int,
          reference: Any) -> dict[str, Any]:
    cmd = sweep_cmd if kind == "sweep" else train_cmd
    events: list[dict[str, Any]] = []
    mode: str | None = None
    for k in range(kills):
        delay = rng.uniform(0.0, span)
        code, seconds = run_child(cmd(out, size, mode), env, kill_after=delay)
        finished = code == 0
        events.append({"kill_after_s": round(delay, 3), "ran_s": round(seconds, 3), "finished_first": finished,
                       "on_disk": _on_disk(kind, out), "temps_left": _temps(out)})
        if finished:
            break
        mode = "resume" if _started(kind, out) else ("overwrite" if out.exists() else None)
    code, seconds = run_child(cmd(out, size, "resume" if _started(kind, out) else
                                  ("overwrite" if out.exists() else None)), env, kill_after=None)
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


def run_kind(kind: str, root: Path, env: dict[str, str], *, trials: int, size: int, seed: int, kills: int
             ) -> dict[str, Any]:
    cmd = sweep_cmd if kind == "sweep" else train_cmd
    run_child(cmd(root / f"{kind}-warm", size, None), env, kill_after=None)  # trains/caches the zoo model first
    ref_dir = root / f"{kind}-uninterrupted"
    _, wall = run_child(cmd(ref_dir, size, None), env, kill_after=None)
    reference = _sweep_result(ref_dir) if kind == "sweep" else _train_result(ref_dir)
    rng = random.Random(seed)
    rows = []
    for t in range(trials):
        out = root / f"{kind}-{t:02d}"
        rows.append(trial(kind, out, env, size, rng, wall, kills, reference))
        shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "size": size, "uninterrupted_s": round(wall, 2), "trials": rows,
            "equal": sum(r["equal"] for r in rows), "n": len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kinds", default="sweep,train")
    p.add_argument("--sweep-evals", type=int, default=120)
    p.add_argument("--train-steps", type=int, default=512)
    p.add_argument("--kills", type=int, default=2, help="kills per trial before the final uninterrupted restart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    env = _env(root / "cache")
    load = os.getloadavg()
    results = {}
    try:
        for kind in args.kinds.split(","):
            size = args.sweep_evals if kind == "sweep" else args.train_steps
            results[kind] = run_kind(kind, root, env, trials=args.trials, size=size, seed=args.seed, kills=args.kills)
            r = results[kind]
            print(f"{kind}: {r['equal']}/{r['n']} killed-and-resumed runs equal the uninterrupted one "
                  f"(uninterrupted {r['uninterrupted_s']} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
              "cpus": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg(),
              "settings": vars(args), "results": results}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(report))
    return 0 if all(r["equal"] == r["n"] for r in results.values()) else 1


def render(report: dict[str, Any]) -> str:
    lines = [f"# kill -9 and resume ({report['date']})", "",
             f"{report['platform']}, {report['cpus']} CPUs, load average {report['loadavg_start'][0]:.2f} at the "
             f"start and {report['loadavg_end'][0]:.2f} at the end. Method: `experiments/benchmarks/kill_resume.py` "
             "(module docstring); kill delays uniform in (0, the uninterrupted run's wall time), seeded "
             f"{report['settings']['seed']}, up to {report['settings']['kills']} kills per trial.", "",
             "| run | size | trials | equal to uninterrupted | kills that hit mid-run | uninterrupted wall |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, r in report["results"].items():
        hits = sum(not e["finished_first"] for t in r["trials"] for e in t["events"])
        unit = "evaluations" if kind == "sweep" else "timesteps"
        lines.append(f"| {kind} | {r['size']} {unit} | {r['n']} | {r['equal']}/{r['n']} | {hits} | "
                     f"{r['uninterrupted_s']} s |")
    lines += ["", "What was on disk at each kill (sweep: records written; train: checkpoints), per trial, is in the "
              "JSON beside this file."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
