"""Loading and checking plans with many rules: this tree against an earlier commit, interleaved, one run.

    python -m experiments.benchmarks.plan_scale --out experiments/benchmarks/results/plan_scale \\
        --baseline 7d26037 --baseline-sizes 1000,2000 --sizes 1000,2000,20000,200000 --rounds 3

A plan of N rules for tiny-llama (shipped weights: nothing is trained): N - 1000 exact rules naming modules
that do not exist (as a plan for a larger model would), 1000 ``re:`` rules that match nothing, and one exact
rule per real linear. Each measurement is a fresh process (``python -c``) on this tree or on the baseline
commit's ``autosurgeon``/``runtime`` (``git archive`` into a temporary folder), timing with
``time.perf_counter``: ``Plan.load`` (JSON parse + validation) and ``check_plan`` against a SearchSpace built
beforehand (on the ``a100-80gb`` paper profile, so no measuring), each once per process. Rounds alternate the
order of the two trees; the report gives per-size medians with min-max and the load average before and after.
A baseline measurement that runs past ``--timeout`` seconds is recorded as such.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
n = int(sys.argv[1]); path = sys.argv[2]
from autosurgeon.zoo import load_model
from autosurgeon.hardware.resolve import load_preset
from autosurgeon.plan import Plan
from autosurgeon.plan_check import check_plan, KNOBS
from autosurgeon.space.search_space import SearchSpace
loaded = load_model("tiny-llama", device="cpu")
profile = load_preset("a100-80gb")
space = SearchSpace.build(loaded, profile, knobs=KNOBS)
linears = [m for m, mod in loaded.model.named_modules() if type(mod).__name__ == "Linear"]
patterns = 1000
rules = [{"target": m, "decisions": {"precision": "int8"}} for m in linears]
rules += [{"target": f"model.layers.{i}.mlp.extra_proj", "decisions": {"precision": "int4"}}
          for i in range(n - patterns - len(linears))]
rules += [{"target": f"re:model\\.layers\\.{i}\\.self_attn\\..*", "decisions": {"precision": "bfloat16"}}
          for i in range(1000, 1000 + patterns)]
with open(path, "w") as fh:
    json.dump({"_type": "autosurgeon.Plan", "_version": 1, "_data": {"default": {}, "rules": rules}}, fh)
t0 = time.perf_counter(); plan = Plan.load(path); t1 = time.perf_counter()
problems = check_plan(loaded, plan, profile, space=space); t2 = time.perf_counter()
print(json.dumps({"rules": len(plan.rules), "load_s": t1 - t0, "check_s": t2 - t1, "problems": len(problems)}))
"""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _measure(tree: Path, n: int, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, str(n), str(Path(tmp) / "plan.json")], env=env,
                                  cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"timed_out": timeout}
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results path without suffix (.json and .md are written)")
    parser.add_argument("--baseline", default=None, help="git commit whose autosurgeon/runtime to compare with")
    parser.add_argument("--baseline-sizes", default="1000,2000")
    parser.add_argument("--sizes", default="1000,2000,20000,200000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    base_sizes = [int(s) for s in args.baseline_sizes.split(",")] if args.baseline else []
    trees = {"this tree": ROOT}
    tmp = tempfile.TemporaryDirectory()
    if args.baseline:
        base = Path(tmp.name) / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "autosurgeon", "runtime"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees[f"baseline {args.baseline}"] = base
    load_before = _load()
    started = time.time()
    raw: list[dict] = []
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            for n in (sizes if tree == ROOT else base_sizes):
                result = _measure(tree, n, args.timeout)
                raw.append({"round": r, "tree": name, "size": n, **result, "load_1m": _load()[0]})
                print(json.dumps(raw[-1]), file=sys.stderr)
    tmp.cleanup()
    table = {}
    for name in trees:
        for n in sorted({x["size"] for x in raw if x["tree"] == name}):
            ok = [x for x in raw if x["tree"] == name and x["size"] == n and "load_s" in x]
            table[f"{name} | {n}"] = {
                "load_s": _summary([x["load_s"] for x in ok]) if ok else None,
                "check_s": _summary([x["check_s"] for x in ok]) if ok else None,
                "problems": ok[0]["problems"] if ok else None,
                "timed_out_or_failed": len([x for x in raw if x["tree"] == name and x["size"] == n]) - len(ok)}
    result = {"what": "Plan.load and check_plan of plans with many rules, fresh process each, interleaved rounds",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "load_average_before": load_before, "load_average_after": _load(), "wall_s": time.time() - started,
              "rounds": args.rounds, "table": table, "raw": raw}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Plans with many rules: load and check ({args.rounds} interleaved rounds, one run)", "",
             f"{os.cpu_count()}-core machine, load average before {load_before}, after {result['load_average_after']}; "
             "seconds, median (min-max) over rounds; each a fresh process.", "",
             "| tree | rules | Plan.load s | check_plan s | problems |", "| --- | --- | --- | --- | --- |"]
    for key, row in table.items():
        name, n = key.split(" | ")
        fmt = (lambda s: f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})" if s else "timed out / failed")
        lines.append(f"| {name} | {n} | {fmt(row['load_s'])} | {fmt(row['check_s'])} | {row['problems']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
