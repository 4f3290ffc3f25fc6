"""The validated proxy: stated error from measured pairs, and re-checks of plans near the bound."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.recheck import ProxyCalibration, calibrate, recheck


def test_calibration_scale_and_error_from_pairs():
    # The proxy underestimates 4x (as seen on a held-out Qwen2: 0.45 % said, 2.6 % measured, ~5.8x).
    pairs = [(0.001, 0.004), (0.002, 0.008), (0.003, 0.0125), (0.004, 0.016)]
    cal = ProxyCalibration.from_pairs(pairs)
    assert cal.scale == pytest.approx(4.0, rel=0.05)
    assert 0 <= cal.error < 0.001
    with pytest.raises(InvalidArgumentError, match=">= 3"):
        ProxyCalibration.from_pairs(pairs[:2])


def test_recheck_measures_near_the_bound_and_refuses_what_measures_above():
    cal = ProxyCalibration(scale=4.0, error=0.001)
    calls = []

    def measure(plan):
        calls.append(plan)
        return 0.012, (0.011, 0.013)

    far = recheck("far", estimate=0.0001, bound=0.01, calibration=cal, measure=measure)
    assert far.admitted and far.measured is None and not calls  # 4 x 0.01 % + 0.1 % << 1 %
    near = recheck("near", estimate=0.0024, bound=0.01, calibration=cal, measure=measure)
    assert calls == ["near"] and not near.admitted and near.measured == 0.012 and "measured" in near.reason
    above = recheck("above", estimate=0.02, bound=0.01, calibration=cal, measure=measure)
    assert not above.admitted and calls == ["near"]
    with pytest.raises(InvalidArgumentError, match="`bound`"):
        recheck("x", estimate=0.0, bound=-1.0, calibration=cal, measure=measure)


def test_calibrate_on_random_plans_of_a_space():
    class Space:
        def random_vector(self, rng):
            return rng.integers(0, 10, 3)

    cal = calibrate(Space(), lambda x: float(x.sum()) * 1e-3, lambda x: (float(x.sum()) * 2e-3, None), n=5)
    assert cal.scale == pytest.approx(2.0) and cal.error == pytest.approx(0.0, abs=1e-12)
    assert len(cal.pairs) == 5 and np.isfinite(cal.error)


def test_unscored_decisions_are_always_measured():
    cal = ProxyCalibration(scale=1.0, error=0.0)
    r = recheck("p", estimate=0.0, bound=0.01, calibration=cal, measure=lambda plan: (1.08, None), unscored=1)
    assert not r.admitted and r.measured == 1.08 and "cannot score" in r.reason
