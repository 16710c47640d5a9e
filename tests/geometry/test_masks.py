"""Circular masks: 1 inside, 0 outside, monotone in between, centred on pixel box//2; distances from centres."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_canon.geometry import circular_mask, soft_circular_mask, squared_distance_px


def _radius_px(box: int) -> np.ndarray:
    y, x = np.mgrid[:box, :box] - box // 2
    return np.sqrt(x**2 + y**2)


def _check_profile(mask: np.ndarray, r: np.ndarray, inner_px: float, outer_px: float) -> None:
    assert np.all(mask[r <= inner_px] == 1.0)
    assert np.all(mask[r > outer_px] == 0.0)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    order = np.argsort(r.ravel(), kind="stable")
    assert np.all(np.diff(mask.ravel()[order]) <= 0.0)  # never rises going outwards


@settings(max_examples=40, deadline=None)
@given(box=st.integers(8, 80), fraction=st.floats(0.1, 0.95), edge=st.floats(0.0, 8.0))
def test_soft_mask_is_one_inside_zero_outside_and_monotone(box, fraction, edge):
    radius = fraction * box / 2
    mask = soft_circular_mask(box, radius, edge)
    assert mask.dtype == np.float32 and mask.shape == (box, box)
    _check_profile(mask, _radius_px(box), radius, radius + edge)


def test_soft_mask_is_cached_read_only():
    mask = soft_circular_mask(32, 10.0, 3.0)
    assert soft_circular_mask(32, 10.0, 3.0) is mask
    with pytest.raises(ValueError):
        mask[0, 0] = 1.0


@settings(max_examples=40, deadline=None)
@given(box=st.integers(8, 80), fraction=st.floats(0.1, 0.95))
def test_circular_mask_is_a_disc_with_a_one_pixel_edge(box, fraction):
    radius = fraction * box / 2
    mask = circular_mask(box, radius).numpy()
    r = _radius_px(box)
    _check_profile(mask, r, radius - 0.5, radius + 0.5)
    # Centred on box//2: symmetric about that pixel.
    assert mask[box // 2, box // 2] == min(1.0, radius + 0.5)
    inner = mask[1:, 1:] if box % 2 == 0 else mask
    np.testing.assert_array_equal(inner, inner[::-1, ::-1])


def test_squared_distance_is_measured_from_each_centre_x_along_columns():
    d2 = squared_distance_px(8, torch.tensor([[4.0, 4.0], [6.0, 1.0]]))
    assert d2.shape == (2, 8, 8)
    assert d2[0, 4, 4] == 0 and d2[0, 4, 7] == 9 and d2[0, 1, 4] == 9
    assert d2[1, 1, 6] == 0 and d2[1, 3, 6] == 4 and d2[1, 1, 3] == 9  # x = 6 is column 6, y = 1 is row 1
