"""Episode preferences: a flat Dirichlet by default (version 0's stream), or a mix of concentrations."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from envs.surgery import SurgeryEnv


def _prefs(env: SurgeryEnv, n: int) -> np.ndarray:
    env.reset(seed=7)
    return np.array([env.reset()[1]["preference"] for _ in range(n)])


def test_one_alpha_keeps_the_flat_stream_and_a_mix_reaches_the_corners() -> None:
    flat = SurgeryEnv(models="digits-cnn", device="h100-80gb")
    same = SurgeryEnv(models="digits-cnn", device="h100-80gb", preference_alphas=(1.0,))
    mixed = SurgeryEnv(models="digits-cnn", device="h100-80gb", preference_alphas=(1.0, 0.3))
    a, b, c = _prefs(flat, 200), _prefs(same, 200), _prefs(mixed, 200)
    assert np.array_equal(a, b)
    assert np.allclose(c.sum(axis=1), 1.0) and not np.array_equal(a, c)
    # near a corner: one weight above 0.9; the mix asks there far more often than the flat Dirichlet (1 % expected)
    assert np.sum(c.max(axis=1) > 0.9) > 2 * max(np.sum(a.max(axis=1) > 0.9), 5)


@pytest.mark.parametrize("alphas", [(), (1.0, 0.0), (float("nan"),)])
def test_bad_alphas(alphas: tuple) -> None:
    with pytest.raises(InvalidArgumentError, match="`preference_alphas` must be one or more Dirichlet"):
        SurgeryEnv(models="digits-cnn", device="h100-80gb", preference_alphas=alphas)
