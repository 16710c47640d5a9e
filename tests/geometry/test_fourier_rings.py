"""Fourier rings: ring index, ring means, FRC and the resolution where it drops below 0.143."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_canon.geometry import (
    column_multiplicity,
    fourier_ring_correlation,
    resolution_at_threshold_A,
    ring_index,
    ring_mean,
)


@settings(max_examples=20, deadline=None)
@given(box=st.integers(4, 96))
def test_ring_index_is_the_rounded_frequency_up_to_nyquist(box):
    rings = ring_index(box)
    assert rings.shape == (box, box // 2 + 1)
    assert int(rings[0, 0]) == 0 and int((rings == 0).sum()) == 1
    assert int(rings[0, box // 2]) == box // 2 and int(rings.max()) == box // 2
    assert int(rings[1, 0]) == 1 and int(rings[-1, 0]) == 1 and int(rings[0, 1]) == 1
    assert torch.bincount(rings.reshape(-1)).min() > 0  # no empty ring


def test_ring_mean_of_a_constant_is_that_constant():
    rings = ring_index(32)
    values = torch.full((2, 32, 17), 3.5)
    torch.testing.assert_close(ring_mean(values, rings, 17), torch.full((2, 17), 3.5))


@settings(max_examples=20, deadline=None)
@given(box=st.sampled_from([32, 33, 64]), seed=st.integers(0, 2**16))
def test_frc_of_an_image_with_itself_is_one(box, seed):
    img = torch.from_numpy(np.random.default_rng(seed).standard_normal((box, box)))
    f = torch.fft.rfft2(img)
    frc = fourier_ring_correlation(f, f, ring_index(box), box // 2 + 1)
    torch.testing.assert_close(frc, torch.ones(box // 2 + 1, dtype=frc.dtype))
    scaled = fourier_ring_correlation(f, 3.0 * f, ring_index(box), box // 2 + 1)
    torch.testing.assert_close(scaled, torch.ones(box // 2 + 1, dtype=frc.dtype))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_frc_of_independent_noise_is_near_zero(seed):
    box = 128
    rng = np.random.default_rng(seed)
    a, b = (torch.fft.rfft2(torch.from_numpy(rng.standard_normal((box, box)))) for _ in range(2))
    rings = ring_index(box)
    frc = fourier_ring_correlation(a, b, rings, box // 2 + 1)
    counts = torch.bincount(rings.reshape(-1)).double()
    # About 1/√(independent coefficients) per ring; 5 σ, on rings with enough of them to say so.
    outer = counts > 50
    assert (frc[outer].abs() < 5 / counts[outer].sqrt()).all()


def test_resolution_at_the_first_ring_below_the_threshold_that_stays_below():
    frc = np.array([1.0, 0.9, 0.5, 0.1, 0.12, 0.3, 0.0])  # box 12: rings 0 … 6
    assert resolution_at_threshold_A(frc, 2.0, 12) == 12 * 2.0 / 3
    # A dip of one ring (a CTF zero at low resolution, or the noise of a ring of few coefficients) is no limit.
    dip = np.array([1.0, 0.95, 0.05, 0.9, 0.8, 0.1, 0.05])
    assert resolution_at_threshold_A(dip, 2.0, 12) == 12 * 2.0 / 5
    assert resolution_at_threshold_A(np.array([1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1]), 2.0, 12) == 4.0  # last ring
    assert resolution_at_threshold_A(np.ones(7), 2.0, 12) == 4.0  # Nyquist: 2 px
    assert math.isclose(resolution_at_threshold_A(frc, 2.0, 12, threshold=0.5), 12 * 2.0 / 3)
    assert resolution_at_threshold_A(np.array([1.0, 0.0]), 1.0, 2) == 2.0


def test_column_multiplicity_counts_each_rfft2_coefficient_as_often_as_the_full_plane_holds_it():
    for box in (8, 9):
        image = torch.randn(box, box, dtype=torch.float64)
        half = torch.fft.rfft2(image).abs() ** 2
        full = torch.fft.fft2(image).abs() ** 2
        torch.testing.assert_close((half * column_multiplicity(box, torch.float64)).sum(), full.sum())
