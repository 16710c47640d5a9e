"""Rotation and shift: the convention (RELION's psi, about box//2) checked against itself and scipy."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from relion_canon.geometry import canonicalise, canonicalising_shift_px, rotate, rotate_images, wrap_deg
from tests.geometry.images import blob_at, blobs, centroid_px, disc

angles_deg = st.floats(-360.0, 360.0, allow_nan=False)
boxes = st.sampled_from([31, 32, 48])
seeds = st.integers(0, 2**16)


def _turn(img: np.ndarray, psi_deg: float, shift_px=None) -> np.ndarray:
    shift = None if shift_px is None else torch.tensor([shift_px], dtype=torch.float64)
    return rotate(torch.from_numpy(img)[None], torch.tensor([math.radians(psi_deg)], dtype=torch.float64),
                  shift)[0].numpy()


@settings(max_examples=30, deadline=None)
@given(box=boxes, a=angles_deg, b=angles_deg, seed=seeds)
def test_turning_by_a_then_b_is_turning_by_a_plus_b(box, a, b, seed):
    img = blobs(box, seed)
    inside = disc(box, 0.35 * box)
    twice, once = _turn(_turn(img, a), b), _turn(img, a + b)
    assert np.abs(twice - once)[inside].max() < 0.03 * img.max()


@settings(max_examples=30, deadline=None)
@given(box=boxes, psi=angles_deg, sx=st.floats(-3, 3), sy=st.floats(-3, 3), seed=seeds)
def test_turning_back_is_the_identity_inside_the_mask(box, psi, sx, sy, seed):
    img = blobs(box, seed, reach=0.25)
    particle = _turn(img, psi, (sx, sy))
    back = rotate(torch.from_numpy(particle)[None], torch.tensor([-math.radians(psi)], dtype=torch.float64),
                  canonicalising_shift_px(torch.tensor([math.radians(psi)], dtype=torch.float64),
                                          torch.tensor([[-sx, -sy]], dtype=torch.float64)))[0].numpy()
    assert np.abs(back - img)[disc(box, 0.3 * box)].max() < 0.03 * img.max()


@settings(max_examples=40, deadline=None)
@given(box=boxes, r=st.floats(3.0, 9.0), phi=angles_deg, psi=angles_deg)
def test_a_point_lands_where_relion_says(box, r, phi, psi):
    """Pixel (x right, y down) at angle φ from +x (towards +y) about box//2 moves to φ − ψ: counter-clockwise
    as displayed with row 0 at the top."""
    c = box // 2
    img = blob_at(box, c + r * math.cos(math.radians(phi)), c + r * math.sin(math.radians(phi)))
    x, y = centroid_px(_turn(img, psi))
    want = math.radians(phi - psi)
    assert math.hypot(x - (c + r * math.cos(want)), y - (c + r * math.sin(want))) < 0.05


@settings(max_examples=20, deadline=None)
@given(psi=angles_deg, seed=seeds)
def test_same_direction_as_scipy_rotate_on_odd_boxes(psi, seed):
    """scipy.ndimage.rotate(img, +ψ) turns about (box − 1)/2, which is box//2 for odd boxes."""
    img = blobs(31, seed)
    inside = disc(31, 10)
    ours = _turn(img, psi)
    assert np.abs(ours - ndimage.rotate(img, psi, reshape=False, order=3))[inside].max() < 0.03 * img.max()
    if abs(wrap_deg(2 * psi)) > 40:  # −ψ is a different turn
        assert np.abs(ours - ndimage.rotate(img, -psi, reshape=False, order=3))[inside].max() > 0.1 * img.max()


@settings(max_examples=20, deadline=None)
@given(sx=st.floats(-4, 4), sy=st.floats(-4, 4))
def test_shift_moves_the_content_by_the_shift(sx, sy):
    img = blob_at(32, 16.0, 16.0)
    x, y = centroid_px(_turn(img, 0.0, (sx, sy)))
    assert abs(x - 16 - sx) < 0.02 and abs(y - 16 - sy) < 0.02


@settings(max_examples=20, deadline=None)
@given(box=boxes, psi=angles_deg, sx=st.floats(-3, 3), sy=st.floats(-3, 3), seed=seeds)
def test_numpy_face_is_the_torch_rotation_and_the_spline_the_same_map(box, psi, sx, sy, seed):
    img = blobs(box, seed)[None]
    linear = rotate_images(img, [psi], order=1, shift_px=[[sx, sy]])
    np.testing.assert_array_equal(linear[0], _turn(img[0], psi, (sx, sy)))
    spline = rotate_images(img, [psi], order=3, shift_px=[[sx, sy]])
    inside = disc(box, 0.25 * box)  # what reads the input well inside its box (the spline reads 0 outside)
    assert np.abs(spline - linear)[0][inside].max() < 0.03 * img.max()


@settings(max_examples=20, deadline=None)
@given(psi=angles_deg, sx=st.floats(-3, 3), sy=st.floats(-3, 3), seed=seeds, out=st.sampled_from([15, 16, 24]))
def test_out_size_samples_the_central_crop(psi, sx, sy, seed, out):
    box = 48
    img = torch.from_numpy(blobs(box, seed))[None]
    psi_t, shift = torch.tensor([math.radians(psi)], dtype=torch.float64), torch.tensor([[sx, sy]], dtype=torch.float64)
    lo = box // 2 - out // 2
    full = rotate(img, psi_t, shift)[:, lo : lo + out, lo : lo + out]
    torch.testing.assert_close(rotate(img, psi_t, shift, out_size=out), full, atol=1e-9, rtol=0)


@settings(max_examples=20, deadline=None)
@given(box=boxes, psi=angles_deg, ox=st.floats(-3, 3), oy=st.floats(-3, 3), seed=seeds, order=st.sampled_from([1, 3]))
def test_canonicalise_undoes_psi_and_origin(box, psi, ox, oy, seed, order):
    """RELION's image of a particle is its canonical image turned by ψ and moved by −origin."""
    img = blobs(box, seed, reach=0.25)
    particle = _turn(img, psi, (-ox, -oy))
    back = canonicalise(particle[None], [psi], np.array([[ox, oy]]), order=order)[0]
    assert np.abs(back - img)[disc(box, 0.3 * box)].max() < 0.03 * img.max()
