"""Incremental repair and footprint (the env's budget shield uses them): equal to the from-scratch results."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.cost.footprint import FootprintTracker, plan_memory
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model

ALL = ("precision", "placement", "group_size", "kernel", "fusion", "layout")


@pytest.fixture(scope="module", params=[("tiny-llama-test", "jetson-orin-nano-8gb"), ("digits-cnn", "h100-80gb"),
                                        ("tiny-moe-test", "rtx-4090")])
def space(request: pytest.FixtureRequest) -> SearchSpace:
    model, device = request.param
    return SearchSpace.build(load_model(model, device="meta"), device, knobs=ALL)


def test_repair_one_equals_repair(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    changed_something = 0
    for _ in range(60):
        y = rng.integers(0, space.nvec)  # raw, mostly invalid vectors
        base = space.repair(y)
        i = int(rng.integers(len(space.variables)))
        y2 = y.copy()
        y2[i] = int(rng.integers(space.nvec[i]))
        got, want = space.repair_one(y2, base, i), space.repair(y2)
        np.testing.assert_array_equal(got, want)
        changed_something += int(not np.array_equal(want, base))
    assert changed_something > 10  # the check saw repairs that differ, not only no-ops


def test_tracker_memo_equals_fresh_footprint(space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    x = space.random_vector(rng)
    tracker = FootprintTracker(space, x)
    for _ in range(80):  # random single-entry moves, back and forth: memo hits and misses
        y = space.random_vector(rng) if rng.random() < 0.2 else space.repair(_moved(x, rng, space))
        for j in np.nonzero(tracker.x != y)[0]:
            tracker.set(int(j), int(y[j]))
        assert tracker.tiers() == plan_memory(space, y)
        x = y
    assert tracker._memo  # the memo was used


def _moved(x: np.ndarray, rng: np.random.Generator, space: SearchSpace) -> np.ndarray:
    y = x.copy()
    i = int(rng.integers(len(y)))
    y[i] = int(rng.integers(space.nvec[i]))
    return y
