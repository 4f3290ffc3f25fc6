"""A sweep on a 2-GPU paper profile: its front's placements use both GPUs (shape model, analytic evaluator)."""
from __future__ import annotations

from autosurgeon.metrics import Metrics
from autosurgeon.multi.footprint import devices_used
from experiments.sweep import build_evaluator, run_sweep
from experiments.sweep.config import SweepConfig


def test_memory_device_objective_is_the_fullest_device() -> None:
    labels = {"latency_s": "estimated", "peak_bytes": "estimated"}
    m = Metrics(latency_s=1.0, peak_bytes={"gpu": 300, "cpu": 5}, labels=labels,
                extra={"device_bytes": {"gpu:0": 120, "gpu:1": 180}})
    assert m.objective("memory:device") == 180.0 and m.objective("memory:gpu") == 300.0
    single = Metrics(latency_s=1.0, peak_bytes={"gpu": 300}, labels=labels)
    assert single.objective("memory:device") == 300.0


def test_a_sweep_on_two_gpus_returns_a_front_whose_placements_use_both(tmp_path) -> None:
    config = SweepConfig(model="llama-7b-16l-shape", device="2x-h100-80gb", evaluator="analytic", quality="none",
                         knobs=("placement",), objectives=("latency", "memory:device"), reference_point=(3.0, 1.1),
                         algo="nsga2", budget_evals=60, pop_size=12, seed=0, baselines=False, hv_at=(60,))
    ev = build_evaluator(config)
    base = ev.evaluate(ev.space.default_vector())
    assert set(base.extra["device_bytes"]) == {"gpu:0"}  # the unmodified model: everything on the first GPU
    res = run_sweep(config, tmp_path / "run", evaluator=ev, outputs=False, tensorboard=False)
    front = [res.records[i] for i in res.front]
    used = [devices_used(ev.space, r["x"]) for r in front]
    both = [u for u in used if {"gpu:0", "gpu:1"} <= set(u)]
    assert both, used
    # Splitting the blocks over two GPUs holds less on the fullest one than the unmodified plan.
    assert all(r["objectives"][1] < base.objective("memory:device") for r in front)
