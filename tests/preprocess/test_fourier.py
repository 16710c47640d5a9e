from __future__ import annotations

import numpy as np
import pytest

from relion_canon.preprocess import fourier_resample, resampled_pixel_size


def _bandlimited(box: int, cutoff: float, seed: int = 0) -> np.ndarray:
    """A random image with no power beyond ``cutoff`` (cycles/px), so cropping above it loses nothing."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.normal(size=(box, box)))
    k = np.sqrt(np.add.outer(np.fft.fftfreq(box) ** 2, np.fft.fftfreq(box) ** 2))
    f[k > cutoff] = 0
    return np.fft.ifft2(f).real.astype(np.float32)


def test_constant_keeps_its_value():
    out = fourier_resample(np.full((2, 64, 64), 3.5, np.float32), 32)
    np.testing.assert_allclose(out, 3.5, atol=1e-5)
    assert out.shape == (2, 32, 32) and out.dtype == np.float32


def test_downsample_of_bandlimited_image_matches_direct_sampling():
    # A band-limited image sampled on a 2x coarser grid is exactly its Fourier crop.
    img = _bandlimited(64, 0.2)
    out = fourier_resample(img[None], 32)[0]
    np.testing.assert_allclose(out, img[::2, ::2], atol=1e-4)


def test_pad_then_crop_is_identity():
    img = _bandlimited(32, 0.45, seed=3)[None]
    back = fourier_resample(fourier_resample(img, 48), 32)
    np.testing.assert_allclose(back, img, atol=1e-4)


def test_odd_boxes_lose_nothing_below_the_new_nyquist():
    img = _bandlimited(65, 0.2, seed=1)[None]  # 0.2 cycles/px < 16/65, the 33 px grid's band limit
    out = fourier_resample(img, 33)
    assert out.shape == (1, 33, 33)
    np.testing.assert_allclose(fourier_resample(out, 65), img, atol=1e-4)


def test_multiplier_applied_in_fourier_space():
    img = _bandlimited(32, 0.3)[None]
    np.testing.assert_allclose(fourier_resample(img, 32, multiplier=-np.ones((32, 32))), -img, atol=1e-5)


def test_non_square_refused():
    with pytest.raises(ValueError, match="square"):
        fourier_resample(np.zeros((1, 8, 10)), 4)


def test_pixel_size():
    assert resampled_pixel_size(1.0, 256, 64) == 4.0
