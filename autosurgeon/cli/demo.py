"""``autosurgeon demo``: the README's first command — the whole flow on this machine, in a few minutes.

Profile this machine, load the default model (its trained weights ship with the package), sweep plans with NSGA-II warm-started
by the Markov model (and a learned policy, if named with --policy), pick the fastest plan that
fits the memory budget at the quality bound, verify it on the runtime, generate with it, and print the
unmodified model against the plan. The pipeline is ``experiments.demo_flow.run_demo``; this module only draws it.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from autosurgeon.cli._budget import add_memory_budget
from autosurgeon.cli._quality import add_quality_arguments

SCENARIOS = ("auto", "search", "streaming")
STREAMING_MODEL = "llama-7b-16l-shape"  # experiments.demo_streaming.MODEL (not imported: --help stays light)
STREAMING_BUDGET = "gpu=3GiB"  # experiments.demo_streaming.BUDGET


def register(subparsers: argparse._SubParsersAction) -> None:
    from experiments.demo_flow import DemoSettings  # the CLI imports the layers above it inside functions

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="the whole flow on this machine: profile, sweep, pick a plan under a budget, run it",
        description="Profile this machine, load the model (shipped trained weights), run a short Pareto sweep "
        "warm-started by the Markov model, verify the fastest plan within the memory budget at the quality "
        "bound on the runtime, then race it against what a user would do otherwise at the same budget "
        "(accelerate offload, uniform int8, uniform int4, knapsack) and the unmodified model, in one interleaved "
        "harness, and choose the fastest that fits (a baseline may win; the table says so). On a CUDA machine the "
        "default is the streaming scenario (--scenario).",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="auto",
                        help="search: sweep plans for a trained model under a share of its memory (the CPU default); "
                        f"streaming: {STREAMING_MODEL} under {STREAMING_BUDGET} on the GPU, which it does not fit, raced "
                        "against accelerate offload and uniform int8/int4 (the default where CUDA is visible and "
                        "--model is not given); auto: as said (default)")
    parser.add_argument("--model", default=None,
                        help=f"model spec (default {defaults.model}; the streaming scenario: {STREAMING_MODEL})")
    add_memory_budget(parser, "search: one share (of the unmodified model's measured memory) or size bounding the "
                      f"chosen plan's GPU+CPU bytes (default {defaults.budget}); streaming: the GPU's (default "
                      f"{STREAMING_BUDGET})", old=("--budget",))
    parser.add_argument("--max-quality-loss", type=float, default=defaults.max_quality_loss,
                        help=f"relative quality bound, 0.01 = 1%% (default {defaults.max_quality_loss})")
    parser.add_argument("--evals", type=int, default=defaults.evals,
                        help=f"plans the sweep evaluates (default {defaults.evals})")
    parser.add_argument("--pop-size", type=int, default=defaults.pop_size,
                        help=f"NSGA-II population (default {defaults.pop_size})")
    parser.add_argument("--out", default=defaults.out,
                        help=f"run folder; rerunning with the same folder resumes the sweep (default {defaults.out})")
    parser.add_argument("--warm-start", default=None, metavar="MARKOV_JSON",
                        help="Markov model for the first population (default: yours for this device class, "
                        "learned by earlier demos, else the one shipped in experiments/warmstart/)")
    parser.add_argument("--policy", default=None, metavar="DIR",
                        help="a policy folder from `autosurgeon train` (e.g. policies/<device class>); none is loaded "
                        "unless named here")
    parser.add_argument("--tokens", type=int, default=defaults.tokens,
                        help=f"tokens to generate (default {defaults.tokens})")
    add_quality_arguments(parser, default_samples=defaults.quality_samples)
    parser.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    parser.set_defaults(func=run)


class _Progress:
    """Stage lines on stderr; the sweep's counter redrawn in place on a terminal, every 10 % otherwise."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_tenth = -1

    def __call__(self, stage: str, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        if stage == "sweep-progress":
            done, total = (int(v) for v in message.split("/"))
            if self.tty:
                print(f"\r  [{elapsed:5.0f} s] sweep {done}/{total}", end="", file=sys.stderr, flush=True)
                if done == total:
                    print(file=sys.stderr)
            elif done * 10 // total > self.last_tenth:
                self.last_tenth = done * 10 // total
                print(f"  [{elapsed:5.0f} s] sweep {done}/{total}", file=sys.stderr, flush=True)
            return
        print(f"[{elapsed:5.0f} s] {stage}: {message}", file=sys.stderr, flush=True)


def _bytes(n: float | None) -> str:
    from autosurgeon.analysis.tables import binary_bytes

    return "-" if n is None else binary_bytes(n)


def _table(result: Any) -> str:
    base, plan = result.baseline, result.chosen
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, fmt: Any, b: Any, p: Any, better: str = "lower") -> None:
        ratio = ""
        if isinstance(b, (int, float)) and isinstance(p, (int, float)) and b and p:
            ratio = f"{b / p:.2f}x" if better == "lower" else f"{p / b:.2f}x"
        rows.append((name, fmt(b), fmt(p) if plan is not None else "-", ratio))

    bm, pm = base.metrics, plan.metrics if plan is not None else None
    per = "token" if bm.phase == "decode" else "sample"  # classifiers are timed per sample
    add("decode latency (ms/token)" if per == "token" else "latency (ms/sample)", lambda v: f"{v * 1e3:.2f}",
        bm.latency_s, pm and pm.latency_s)
    if bm.prefill_s is not None:
        add("prefill (ms)", lambda v: "-" if v is None else f"{v * 1e3:.1f}", bm.prefill_s, pm and pm.prefill_s)
    if base.tokens:
        add(f"generate tokens/s ({len(base.tokens)} tokens, median of 3 interleaved)", lambda v: f"{v:.1f}", base.tokens_per_s,
            plan and plan.tokens_per_s, "higher")
    for tier in ("gpu", "cpu", "disk"):
        b, p = bm.peak_bytes.get(tier, 0), pm.peak_bytes.get(tier, 0) if pm else None
        if b or p:
            add(f"peak memory {tier}", _bytes, b, p)
    add("memory GPU+CPU", _bytes, bm.memory_bytes, pm and pm.memory_bytes)
    if bm.energy_j is not None:
        label = bm.labels.get("energy_j", "")
        add(f"energy (mJ/{per}, {label})", lambda v: "-" if v is None else f"{v * 1e3:.2f}", bm.energy_j,
            pm and pm.energy_j)
    if bm.quality_loss is not None or (pm and pm.quality_loss is not None):
        rows.append(("quality loss (measured)", f"{bm.quality_loss or 0:+.3%}",
                     f"{pm.quality_loss:+.3%}" if pm and pm.quality_loss is not None else "-", ""))
    header = ("", "unmodified", "chosen plan", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _text(tokens: list[int]) -> str:
    return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")


def _scenario(args: argparse.Namespace) -> str:
    if args.scenario != "auto":
        return args.scenario
    if args.model is not None:
        return "search"
    import torch

    return "streaming" if torch.cuda.is_available() else "search"


def run(args: argparse.Namespace) -> int:
    from autosurgeon.analysis.tables import si
    from experiments.demo_flow import DemoSettings, run_demo

    if _scenario(args) == "streaming":
        from autosurgeon.cli.demo_streaming import run_streaming

        return run_streaming(args, _Progress())
    defaults = DemoSettings()
    settings = DemoSettings(model=args.model or defaults.model, budget=args.memory_budget or defaults.budget,
                            max_quality_loss=args.max_quality_loss,
                            evals=args.evals, pop_size=args.pop_size, out=args.out, warm_start=args.warm_start,
                            policy=args.policy, tokens=args.tokens, quality_samples=args.quality_samples,
                            seed=args.seed, quality_data=args.data, quality_method=args.quality_method)
    progress = _Progress()
    result = run_demo(settings, progress=progress)

    unit = result.profile.default_unit()
    rates = ", ".join(f"{k} {si(v)}FLOP/s" for k, v in unit.gemm_flops.items())
    print(f"device: {result.profile.name} ({'measured' if result.profile.measured else 'on paper'}, class "
          f"{result.device_class}); {unit.name}: {rates}")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.loaded.metrics.items()
                        if k in ("perplexity", "unigram_perplexity", "accuracy"))
    print(f"model: {result.loaded.name} ({si(sum(p.numel() for p in result.loaded.model.parameters()))} params; "
          f"{metrics or 'no recorded metrics'})")
    print(f"budget: {_bytes(result.budget_bytes)} on GPU+CPU ({settings.budget} of the unmodified model's "
          f"{_bytes(result.baseline.metrics.memory_bytes)}), quality loss <= {settings.max_quality_loss:.1%}")
    print(f"warm start: {result.warm_start or 'none'}; policy: {result.policy or 'none (name one with --policy)'}\n")
    if result.comparison is not None:
        from autosurgeon.cli.demo_table import race_table, standings_text

        print("what this budget buys, against what you would do otherwise (same budget, same run):\n")
        print(race_table(result))
        print("\nthe chosen plan" + (f" ({result.chosen.label})" if result.chosen is not None else "") + ":")
        print(standings_text(result))
        print("\nunmodified vs chosen, step by step (runtime evaluator: decode step, prefill, memory, quality):\n")
    print(_table(result))
    if result.chosen is not None:
        print(f"\nchosen: {result.chosen_source}; verified on the runtime (latency, memory and quality measured; "
              f"energy {result.chosen.metrics.labels.get('energy_j', 'not measured')})")
        if result.chosen.tokens:
            same = sum(a == b for a, b in zip(result.chosen.tokens, result.baseline.tokens))
            print(f"greedy continuation ({same}/{len(result.baseline.tokens)} tokens equal to the unmodified "
                  f"model's):\n---\n{settings.prompt}{_text(result.chosen.tokens)}\n---")
    else:
        print("\nno plan was chosen: " + "; ".join(result.notes or ["see the rejections below"]))
    for line in result.rejected:
        print(f"rejected after measuring: {line}")
    for note in result.notes:
        print(f"note: {note}")
    print("\nfiles:")
    for name, path in result.outputs.items():
        print(f"  {name:<11} {path}")
    if result.warm_start_updated is not None:
        print(f"  {'markov':<11} {result.warm_start_updated} (updated with this front; the next demo starts from it)")
    print(f"\nnext: `tensorboard --logdir {result.sweep_dir}`; `autosurgeon run {result.loaded.name} --plan "
          f"{result.plan_path or 'PLAN.json'}`")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"time: {time.perf_counter() - progress.started:.0f} s ({timing})")
    return 0 if result.chosen is not None else 1
