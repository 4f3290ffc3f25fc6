"""Does a step that mixes formats cost more than its layers priced one format at a time? (issue 13 diagnosis)

On a zoo model (never the unseen set), resident, default kernels: uniform plans of a few formats and plans that
alternate two formats leaf by leaf. The runtime times them all in interleaved rounds (runtime_reference); the
analytic and profiled evaluators price each. For a half-half mix, "mean of uniforms" is the average of the two
uniform plans' figures from the same source: a mix measured above it on the runtime but priced at it by an
evaluator is a cost of mixing that no per-layer table holds.

    PYTHONPATH=. python -m experiments.benchmarks.evaluator_error_mixes --model tiny-llama --out results/x.md
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.evaluate import AnalyticEvaluator, EvaluationCache, ProfiledEvaluator, RuntimeEvaluator
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.benchmarks import runtime_reference

PATTERNS = {"float32": ("float32",), "bfloat16": ("bfloat16",), "int8": ("int8",), "int4": ("int4",),
            "float32/int8": ("float32", "int8"), "bfloat16/int8": ("bfloat16", "int8"),
            "float32/bfloat16": ("float32", "bfloat16"), "int8/int4": ("int8", "int4")}
SOURCES = ("runtime", "analytic", "profiled")


def pattern_vector(space: SearchSpace, pattern: tuple[str, ...]) -> np.ndarray:
    """The default plan with the precision variables set to ``pattern``, cycled leaf by leaf where allowed."""
    x = space.default_vector()
    precision = [i for i, v in enumerate(space.variables) if v.knob == "precision"]
    for j, i in enumerate(precision):
        v, want = space.variables[i], pattern[j % len(pattern)]
        if want in v.choices and v.mask[v.choices.index(want)]:
            x[i] = v.choices.index(want)
    return space.repair(x)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    loaded, profile = load_model(args.model), resolve_profile("local")
    space = SearchSpace.build(loaded, profile, knobs=("precision",))
    runtime = RuntimeEvaluator(loaded, profile, space=space, quality=False, energy=False,
                               timing=TimingSettings(clock="cpu", step_warmup=1, step_repeats=3),
                               cache=EvaluationCache())
    analytic = AnalyticEvaluator(loaded, profile, space=space, cache=EvaluationCache())
    profiled = ProfiledEvaluator(loaded, profile, space=space, timing=TimingSettings(clock="cpu"),
                                 use_disk_cache=False, cache=EvaluationCache())
    vectors = [pattern_vector(space, p) for p in PATTERNS.values()]
    ref = runtime_reference.measure(runtime, vectors, rounds=args.rounds, steps=10, warmup=2, seed=args.seed)
    rows = {}
    for (name, _), x, median in zip(PATTERNS.items(), vectors, ref.medians):
        rows[name] = {"runtime": median, "analytic": analytic.evaluate(x).latency_s,
                      "profiled": profiled.evaluate(x).latency_s}
    return {"model": args.model, "rounds": args.rounds, "threads": args.threads, "rows": rows,
            "load_before": load_before, "load_after": os.getloadavg(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(res: dict[str, Any]) -> str:
    rows = res["rows"]
    lines = [f"# Mixed-format steps against their uniform plans: {res['model']}", "",
             f"{res['date']}, torch {res['torch']}, {res['threads']} thread(s), {res['rounds']} interleaved rounds; "
             f"load {res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f}.", "",
             "| plan | runtime ms | analytic ms (error) | profiled ms (error) |", "| --- | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['runtime'] * 1e3:.3f} | " + " | ".join(
            f"{r[s] * 1e3:.3f} ({r[s] / r['runtime'] - 1:+.1%})" for s in SOURCES[1:]) + " |")
    lines += ["", "| mix | " + " | ".join(f"{s}: mix / mean of its uniforms" for s in SOURCES) + " |",
              "| --- |" + " ---: |" * len(SOURCES)]
    for name in (n for n in rows if "/" in n):
        a, b = name.split("/")
        lines.append(f"| {name} | " + " | ".join(
            f"{rows[name][s] / ((rows[a][s] + rows[b][s]) / 2):.3f}" for s in SOURCES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama", help="a zoo model (never an unseen one: this diagnoses)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default=None, help="markdown path; a .json is written beside it")
    args = p.parse_args(argv)
    if args.model.startswith("unseen"):
        p.error(f"--model {args.model!r}: the unseen set is for benchmarks only; diagnose on a zoo model")
    res = run(args)
    text = markdown(res)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
