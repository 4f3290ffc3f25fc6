"""Hashes of what `plan`, `sweep` and `run` write for the zoo models, to prove a refactor changed no behaviour.

Run before and after a change (same machine, same zoo cache) and compare the two JSON files::

    python -m experiments.benchmarks.output_hashes --out before.json
    python -m experiments.benchmarks.output_hashes --out after.json --compare before.json

Measured fields (times, loads, dates, host names, paths) are dropped before hashing: only decisions, estimates
from deterministic evaluators, and generated tokens are compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Keys whose values are measurements or provenance, not behaviour.
_VOLATILE = ("time", "date", "wall", "load", "host", "path", "dir", "created", "seconds", "_s", "tok_s", "tokens_per_s",
             "elapsed", "duration", "pid", "peak_rss", "rss", "energy", "watts", "version", "fingerprint", "started",
             "finished", "throughput", "latency", "ms_per", "cache", "python", "torch", "platform", "cpu", "stats",
             "threads", "per_s", "j_per", "mj")


def _volatile(key: str) -> bool:
    k = key.lower()
    return any(v in k for v in _VOLATILE)


_WORK = ""  # the run's temporary folder, replaced by "<work>" in strings (paths differ between runs)


def _clean(obj: Any) -> Any:
    if isinstance(obj, str) and _WORK:
        return obj.replace(_WORK, "<work>")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items()) if not _volatile(str(k))}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 9)
    return obj


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_clean(obj), sort_keys=True).encode()).hexdigest()[:16]


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "autosurgeon", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # a failure is an output too: its message is hashed, and the rest still runs
        return json.dumps({"failed": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:]})
    return proc.stdout


def _json_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(work: Path) -> dict[str, str]:
    global _WORK
    _WORK = str(work)
    out: dict[str, str] = {}
    plans = {
        "plan/digits-cnn/h100/70%": ("digits-cnn", "h100-80gb", ["--budget-memory", "70%"]),
        "plan/tiny-llama-test/rtx-4090/40%": ("tiny-llama-test", "rtx-4090", ["--budget-memory", "40%"]),
        "plan/tiny-moe-test/h100/q1%": ("tiny-moe-test", "h100-80gb", ["--max-quality-loss", "0.01"]),
        "plan/tiny-llama-test/local/60%": ("tiny-llama-test", "local", ["--budget-memory", "60%"]),
    }
    for key, (model, device, extra) in plans.items():
        path = work / (key.replace("/", "_").replace("%", "pct") + ".json")
        failed = _cli("plan", model, "--device", device, *extra, "--out", str(path))
        out[key] = _digest(json.loads(path.read_text()) if path.is_file() else json.loads(failed))
    for model, device in (("tiny-llama-test", "jetson-orin-nano-8gb"), ("digits-cnn", "h100-80gb"),
                          ("tiny-moe-test", "rtx-4090")):
        run = work / f"sweep_{model}_{device}"
        _cli("sweep", model, "--device", device, "--evaluator", "analytic", "--budget-evals", "24", "--seed", "0",
             "--out", str(run))
        for name in sorted(p.name for p in run.iterdir()):
            p = run / name
            if name.endswith(".json"):
                out[f"sweep/{model}/{device}/{name}"] = _digest(json.loads(p.read_text()))
            elif name.endswith(".jsonl"):
                out[f"sweep/{model}/{device}/{name}"] = _digest(_json_lines(p))
    for key, args in {
        "run/tiny-llama-test/plain": ["tiny-llama-test", "--device", "cpu", "--max-new-tokens", "12"],
        "run/tiny-llama-test/int8": ["tiny-llama-test", "--device", "cpu", "--max-new-tokens", "12",
                                     "--weight-format", "int8"],
        "run/tiny-llama-test/plan60-local": ["tiny-llama-test", "--device", "cpu", "--max-new-tokens", "12", "--plan",
                                       str(work / "plan_tiny-llama-test_local_60pct.json")],
        "run/tiny-moe-test/stream": ["tiny-moe-test", "--device", "cpu", "--max-new-tokens", "12",
                                     "--memory-budget", "cpu=400KiB"],
    }.items():
        out[key] = _digest(json.loads(_cli("run", *args, "--json")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", help="an earlier output of this script")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hashes = collect(Path(tmp))
    Path(args.out).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        diff = sorted(k for k in before.keys() | hashes.keys() if before.get(k) != hashes.get(k))
        for k in diff:
            sys.stdout.write(f"DIFF {k}: {before.get(k)} -> {hashes.get(k)}\n")
        sys.stdout.write(f"{len(hashes)} outputs, {len(diff)} differ\n")
        return 1 if diff else 0
    sys.stdout.write(f"{len(hashes)} outputs hashed\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
