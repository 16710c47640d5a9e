"""Fourier-space resampling: crop (downsample) or pad (upsample) images to another box."""

from __future__ import annotations

import numpy as np
import scipy.fft


def _centre_slices(n_from: int, n_to: int) -> slice:
    """The centred window of length min(n_from, n_to) in an fftshifted axis of length max(...)."""
    big, small = max(n_from, n_to), min(n_from, n_to)
    start = big // 2 - small // 2
    return slice(start, start + small)


def fourier_resample(images: np.ndarray, new_box: int, multiplier: np.ndarray | None = None) -> np.ndarray:
    """Resample (..., N, N) real images to (..., M, M) by cropping or zero-padding their spectrum.

    Pixel values keep their scale (a constant image stays the same constant). ``multiplier``, an array
    broadcastable to the (..., N, N) unshifted spectrum, is applied first (e.g. a CTF phase flip), so
    that filtering and resampling cost one FFT pair.
    """
    images = np.asarray(images)
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"images must be square, got {images.shape[-2:]}")
    if new_box == n and multiplier is None:
        return images.astype(np.float32, copy=False)
    spectrum = scipy.fft.fft2(images.astype(np.float32, copy=False), workers=-1)
    if multiplier is not None:
        spectrum *= multiplier
    if new_box != n:
        shifted = scipy.fft.fftshift(spectrum, axes=(-2, -1))
        out = np.zeros(images.shape[:-2] + (new_box, new_box), dtype=spectrum.dtype)
        window = _centre_slices(n, new_box)
        if new_box < n:
            out[...] = shifted[..., window, window]
        else:
            out[..., window, window] = shifted
        spectrum = scipy.fft.ifftshift(out, axes=(-2, -1))
    result = scipy.fft.ifft2(spectrum, workers=-1).real
    result *= (new_box / n) ** 2  # keep real-space values on the same scale
    return result.astype(np.float32, copy=False)


def resampled_pixel_size(pixel_size: float, box: int, new_box: int) -> float:
    """The pixel size after resampling a ``box`` image to ``new_box`` (same physical field of view)."""
    return pixel_size * box / new_box
