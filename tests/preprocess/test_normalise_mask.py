from __future__ import annotations

import numpy as np
import pytest

from relion_canon.preprocess import apply_mask, normalise, soft_circular_mask
from relion_canon.preprocess.normalise import default_bg_radius


def _background(box):
    y, x = np.mgrid[:box, :box] - box // 2
    return (x**2 + y**2) > default_bg_radius(box) ** 2


def test_background_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    imgs = rng.normal(5.0, 3.0, size=(4, 32, 32)).astype(np.float32)
    imgs[:, 12:20, 12:20] += 50  # a "particle" in the middle must not bias the statistics
    out = normalise(imgs, ramp=False)
    bg = out[:, _background(32)]
    np.testing.assert_allclose(bg.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(bg.std(axis=1), 1, atol=1e-5)


def test_ramp_removes_gradient():
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:32, :32]
    noise = rng.normal(size=(32, 32))
    gradient = noise + 0.5 * x - 0.3 * y
    plain = normalise(noise[None].astype(np.float32))
    ramped = normalise(gradient[None].astype(np.float32), ramp=True)
    np.testing.assert_allclose(ramped, plain, atol=1e-4)
    assert not np.allclose(normalise(gradient[None].astype(np.float32), ramp=False), plain, atol=0.1)


def test_constant_image_does_not_divide_by_zero():
    out = normalise(np.zeros((1, 16, 16), np.float32))
    assert np.all(out == 0)


def test_radius_must_leave_background():
    with pytest.raises(ValueError, match="no background"):
        normalise(np.zeros((1, 16, 16), np.float32), bg_radius=20)


def test_soft_mask_profile():
    m = soft_circular_mask(32, 8.0, 4.0)
    assert m[16, 16] == 1 and m[16, 16 + 8] == 1
    assert 0 < m[16, 16 + 10] < 1
    assert m[16, 16 + 12] == 0 and m[0, 0] == 0
    out = apply_mask(np.ones((2, 32, 32), np.float32), 8.0, 4.0, fill=0.0)
    np.testing.assert_array_equal(out[0], m)
