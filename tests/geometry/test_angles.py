"""Angle wrapping: degrees to [−180, 180), radians to (−π, π]."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from relion_canon.geometry import wrap_deg, wrap_rad

finite = st.floats(-1e4, 1e4, allow_nan=False)


@given(a=finite)
def test_wrap_deg_is_in_range_congruent_and_idempotent(a):
    w = float(wrap_deg(a))
    assert -180.0 <= w < 180.0
    assert math.isclose(math.remainder(w - a, 360.0), 0.0, abs_tol=1e-9)
    assert float(wrap_deg(w)) == w


def test_wrap_deg_half_open_end():
    np.testing.assert_array_equal(wrap_deg([180.0, -180.0, 540.0, 0.0, 359.5]), [-180.0, -180.0, -180.0, 0.0, -0.5])


@given(a=finite)
def test_wrap_rad_is_in_range_congruent_and_idempotent(a):
    w = wrap_rad(torch.tensor(a, dtype=torch.float64))
    assert -math.pi < float(w) <= math.pi
    assert math.isclose(math.remainder(float(w) - a, 2 * math.pi), 0.0, abs_tol=1e-9)
    assert math.isclose(float(wrap_rad(w)), float(w), abs_tol=1e-12)


def test_wrap_rad_half_open_end_and_dtype():
    w = wrap_rad(torch.tensor([math.pi, -math.pi, 3 * math.pi, 0.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([math.pi, math.pi, math.pi, 0.0], dtype=torch.float64))
    assert wrap_rad(torch.zeros(3)).dtype == torch.float32


@given(a=finite)
def test_the_two_units_agree_away_from_half_a_turn(a):
    deg = float(wrap_deg(a))
    rad = float(wrap_rad(torch.tensor(math.radians(a), dtype=torch.float64)))
    if abs(deg) < 179.999:
        assert math.isclose(math.degrees(rad), deg, abs_tol=1e-7)
