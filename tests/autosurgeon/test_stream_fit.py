"""The streaming probe's fit (autosurgeon/cost/stream_fit.py): fixed + per fetch + per byte, never negative."""
from __future__ import annotations

import pytest

from autosurgeon.cost.stream_fit import fit_stream


def _points(fixed, per_fetch, per_byte, shapes):
    return [{"exposed_s": fixed + f * per_fetch + b * per_byte, "fetches": f, "bytes": b} for f, b in shapes]


def test_the_three_terms_come_back_from_all_and_one_block_points():
    # 4 blocks streamed at four byte counts, then 1 block at two: the probe's points
    shapes = [(4, 4e7), (4, 2e7), (4, 1e7), (4, 5e6), (1, 1e7), (1, 1.25e6)]
    fixed, fetch, per_byte = fit_stream(_points(1.3e-3, 1.2e-3, 2e-11, shapes))
    assert fixed == pytest.approx(1.3e-3, rel=1e-6) and fetch == pytest.approx(1.2e-3, rel=1e-6)
    assert per_byte == pytest.approx(2e-11, rel=1e-5)


def test_noise_that_would_make_a_term_negative_leaves_it_at_zero():
    shapes = [(4, 4e7), (4, 5e6), (1, 1e7), (1, 1.25e6)]
    pts = _points(0.0, 1e-3, 0.0, shapes)
    pts[0]["exposed_s"] -= 5e-4  # more bytes read as LESS time: a negative slope from noise
    fixed, fetch, per_byte = fit_stream(pts)
    assert min(fixed, fetch, per_byte) >= 0 and per_byte == 0.0 and fetch > 0


def test_points_of_one_fetch_count_fit_bytes_and_a_fixed_cost_only():
    fixed, fetch, per_byte = fit_stream(_points(2e-3, 0.0, 1e-10, [(4, 4e7), (4, 1e7), (4, 5e6)]))
    assert fetch == 0.0 and fixed + 4 * fetch == pytest.approx(2e-3, rel=1e-6) and per_byte == pytest.approx(1e-10)
