"""RELION's particle normalisation: zero mean and unit standard deviation of the background."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# relion_preprocess uses 75 % of the image radius when no background radius is given.
DEFAULT_BG_FRACTION = 0.75


def default_bg_radius(box: int) -> float:
    return DEFAULT_BG_FRACTION * box / 2


@lru_cache(maxsize=16)
def _background(box: int, bg_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Background pixel mask and the pseudo-inverse of the plane design matrix [1, x, y] on it."""
    c = box // 2  # RELION's image origin for even and odd boxes
    y, x = np.mgrid[:box, :box] - c
    mask = (x**2 + y**2) > bg_radius**2
    design = np.stack([np.ones(mask.sum()), x[mask], y[mask]], axis=1).astype(np.float64)
    return mask, np.linalg.pinv(design)


def normalise(images: np.ndarray, bg_radius: float | None = None, ramp: bool = True) -> np.ndarray:
    """Normalise (..., N, N) images as ``relion_preprocess --norm`` does.

    With ``ramp`` (RELION's default) a plane fitted to the background is subtracted first, which removes
    ice gradients; then the background (pixels outside ``bg_radius``, in pixels; default 75 % of the
    radius) is brought to mean 0 and standard deviation 1. An image with a flat background (all-zero
    junk, say) keeps std 1 by dividing by 1 instead of 0.
    """
    images = np.asarray(images, dtype=np.float32)
    box = images.shape[-1]
    radius = default_bg_radius(box) if bg_radius is None else float(bg_radius)
    if not 0 < radius < box / np.sqrt(2):
        raise ValueError(f"background radius {radius} px leaves no background in a {box} px box")
    mask, pinv = _background(box, round(radius, 6))
    flat = images.reshape(-1, box, box)
    bg = flat[:, mask].astype(np.float64)  # (B, n_bg)
    if ramp:
        c = box // 2
        y, x = np.mgrid[:box, :box] - c
        coef = bg @ pinv.T  # (B, 3): per-image plane a + b x + c y, least squares on the background
        plane = coef[:, 0, None, None] + coef[:, 1, None, None] * x + coef[:, 2, None, None] * y
        flat = flat - plane.astype(np.float32)
        bg = flat[:, mask].astype(np.float64)
    mean = bg.mean(axis=1)
    std = bg.std(axis=1)
    std[std == 0] = 1.0
    out = (flat - mean[:, None, None].astype(np.float32)) / std[:, None, None].astype(np.float32)
    return out.reshape(images.shape).astype(np.float32, copy=False)
