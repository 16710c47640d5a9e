"""Resampling a 3-D map onto another grid, as the simulator and the reference-map input both need it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def lowpass_map(data: np.ndarray, cutoff: float) -> np.ndarray:
    """Zero every Fourier component above ``cutoff`` cycles/voxel (a hard sphere, like Fourier cropping)."""
    n = data.shape[0]
    f = np.fft.rfftn(data)
    k = np.fft.fftfreq(n)
    kr = np.fft.rfftfreq(n)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2
    f[k2 > cutoff**2] = 0
    return np.fft.irfftn(f, s=data.shape, axes=(0, 1, 2))


def resample_map(data: np.ndarray, map_pixel_size: float, box: int, pixel_size: float) -> np.ndarray:
    """Resample a cubic (z, y, x) map to ``box``³ voxels of ``pixel_size`` Å, keeping voxel ``n // 2`` (the
    RELION centre) on the output's ``box // 2``; regions outside the input are zero, outside the box cut off.

    Downsampling first removes what the new grid cannot hold (a Fourier crop to the new Nyquist), then a cubic
    spline samples the new grid, so any ratio of pixel sizes is exact.
    """
    data = np.asarray(data, dtype=np.float64)
    n = data.shape[0]
    ratio = pixel_size / map_pixel_size  # input voxels per output voxel
    if abs(ratio - 1.0) < 1e-9:
        out = np.zeros((box, box, box))
        # Integer re-boxing: copy the overlap, centre on centre.
        lo_in, lo_out = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
        size = min(n - lo_in, box - lo_out)
        sl_in = slice(lo_in, lo_in + size)
        sl_out = slice(lo_out, lo_out + size)
        out[sl_out, sl_out, sl_out] = data[sl_in, sl_in, sl_in]
        return out.astype(np.float32)
    if ratio > 1.0:
        data = lowpass_map(data, 0.5 / ratio)
    offset = n // 2 - ratio * (box // 2)
    out = ndimage.affine_transform(
        data, np.full(3, ratio), offset=offset, output_shape=(box, box, box), order=3, mode="constant", cval=0.0
    )
    return out.astype(np.float32)
