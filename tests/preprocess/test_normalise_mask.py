from __future__ import annotations

import numpy as np
import pytest

from relion_canon.geometry import soft_circular_mask
from relion_canon.preprocess import apply_mask, normalise
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


@pytest.mark.parametrize("ramp", [True, False])
def test_flat_background_is_not_blown_up_from_rounding_errors(ramp):
    # A constant (and, with the ramp, a planar) background has a variance of rounding errors only: it must be
    # treated as 0 (divide by 1), not amplified into values of order 1.
    y, x = np.mgrid[:16, :16]
    image = (3.0 + (0.37 * x - 0.11 * y if ramp else 0 * x))[None].astype(np.float32) + 1000.0
    out = normalise(image, ramp=ramp)
    assert np.abs(out).max() < 1e-3


def test_batch_statistics_match_each_image_alone():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:33, :33]
    imgs = (rng.normal(0, 1, size=(5, 33, 33)) * rng.uniform(0.5, 20, (5, 1, 1)) + rng.uniform(-1e3, 1e3, (5, 1, 1))
            + rng.normal(size=(5, 1, 1)) * x + rng.normal(size=(5, 1, 1)) * y).astype(np.float32)
    together = normalise(imgs)
    for k in range(5):
        np.testing.assert_allclose(together[k], normalise(imgs[k:k + 1])[0], atol=1e-5)
        bg = together[k][_background(33)]
        assert abs(bg.mean()) < 1e-4 and abs(bg.std() - 1) < 1e-4


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
