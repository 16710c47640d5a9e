"""Polar sampling: a turn of the image is a circular shift along the angle axis."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_canon.geometry import polar_grid, rotate, sample_polar, sample_rings
from tests.geometry.images import blob_at, blobs

N_ANGLES = 64


@settings(max_examples=30, deadline=None)
@given(box=st.sampled_from([31, 32, 48]), k=st.integers(-N_ANGLES, N_ANGLES), seed=st.integers(0, 2**16))
def test_a_turned_image_is_a_circular_shift_of_its_polar_samples(box, k, seed):
    img = torch.from_numpy(blobs(box, seed)).float()[None]
    radii, grid = polar_grid(box, 0.35 * box, N_ANGLES)
    turned = rotate(img, torch.tensor([k * 2 * math.pi / N_ANGLES]))
    want = torch.roll(sample_polar(img, grid), -k, dims=-1)
    assert (sample_polar(turned, grid) - want).abs().max() < 0.03 * img.max()


def test_rings_start_at_angle_zero_on_plus_x_and_turn_towards_plus_y():
    box, r = 32, 6
    radii, grid = polar_grid(box, 10, N_ANGLES)
    img = torch.from_numpy(blob_at(box, 16 + r, 16)).float()[None]  # on +x
    ring = sample_polar(img, grid)[0, r - 1]
    assert int(ring.argmax()) == 0
    img = torch.from_numpy(blob_at(box, 16, 16 + r)).float()[None]  # on +y (down)
    assert int(sample_polar(img, grid)[0, r - 1].argmax()) == N_ANGLES // 4
    assert radii.tolist() == list(range(1, 11))


@settings(max_examples=20, deadline=None)
@given(cx=st.floats(-3, 3), cy=st.floats(-3, 3), seed=st.integers(0, 2**16))
def test_moved_centres_sample_a_shifted_image_like_a_centred_one(cx, cy, seed):
    box = 48
    img = torch.from_numpy(blobs(box, seed, reach=0.2))[None]
    _, grid = polar_grid(box, 12, N_ANGLES)
    shifted = rotate(img, torch.zeros(1, dtype=torch.float64), torch.tensor([[cx, cy]], dtype=torch.float64))
    got = sample_polar(shifted, grid.double(), torch.tensor([[cx, cy]], dtype=torch.float64))
    assert (got - sample_polar(img, grid.double())).abs().max() < 0.03 * img.max()


@settings(max_examples=20, deadline=None)
@given(box=st.sampled_from([31, 32]), seed=st.integers(0, 2**16))
def test_spline_face_samples_the_same_points(box, seed):
    img = blobs(box, seed)
    radii, grid = polar_grid(box, 12, N_ANGLES)
    spline = sample_rings(img, radii.numpy(), N_ANGLES)
    linear = sample_polar(torch.from_numpy(img)[None], grid.double())[0].numpy()
    assert np.abs(spline - linear).max() < 0.03 * img.max()
