"""First screens: wall time of `autosurgeon --help`, `autosurgeon zoo`, `import autosurgeon`, and the 70B analysis.

    python -m experiments.benchmarks.first_screens [--rounds 7] [--out experiments/benchmarks/results/first_screens.json]

Goals (issue 15): `--help` and `zoo` within 1 s on a quiet machine; analysing the Llama-70B shape on meta
within 5 s. Method: each screen is a fresh Python process (what a user waits for), timed wall-clock from
spawn to exit; the screens run interleaved in rounds (the order rotated every round) so load from other jobs
falls on all alike; reported: median, min and max per screen, and the 1-minute load average before and after.
A run under load says so: compare figures only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENS = {
    "import autosurgeon": [sys.executable, "-c", "import autosurgeon"],
    "autosurgeon --help": [sys.executable, "-m", "autosurgeon", "--help"],
    "autosurgeon zoo": [sys.executable, "-m", "autosurgeon", "zoo"],
    "analyze llama-70b-shape (meta, no roofline)": [sys.executable, "-m", "autosurgeon", "analyze", "llama-70b-shape",
                                                    "--device", "none", "--json"],
}
GOALS_S = {"autosurgeon --help": 1.0, "autosurgeon zoo": 1.0, "analyze llama-70b-shape (meta, no roofline)": 5.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "experiments/benchmarks/results/first_screens.json"))
    args = parser.parse_args()
    names = list(SCREENS)
    times: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            started = time.perf_counter()
            subprocess.run(SCREENS[name], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    load_after = os.getloadavg()[0]
    rows = {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "rounds": len(t),
                "goal_s": GOALS_S.get(n)} for n, t in times.items()}
    record = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "load_1min_before": load_before, "load_1min_after": load_after,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "method": __doc__.split("Method: ")[1].split(
                  "A run under")[0].replace("\n", " ").strip(), "screens": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"load average {load_before:.1f} -> {load_after:.1f}")
    for n, row in rows.items():
        goal = f" (goal {row['goal_s']:.0f} s)" if row["goal_s"] else ""
        print(f"{n:<45} median {row['median_s']:.2f} s, min {row['min_s']:.2f}, max {row['max_s']:.2f}{goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
