"""RELION's particle normalisation: zero mean and unit standard deviation of the background."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from relion_canon.geometry import soft_circular_mask

# relion_preprocess uses 75 % of the image radius when no background radius is given.
DEFAULT_BG_FRACTION = 0.75


def default_bg_radius(box: int) -> float:
    return DEFAULT_BG_FRACTION * box / 2


@lru_cache(maxsize=16)
def _background(box: int, bg_radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The background's moments as matrices over all pixels, so a batch's statistics are matrix products.

    Returns ``weights`` (box², 3): the background mask times 1, x and y, so that ``images @ weights`` is
    Dᵀb for the plane design D = [1, x, y] on the background; ``gram`` = DᵀD (3, 3); and ``basis`` (3, box²):
    1, x, y at every pixel, to draw a fitted plane.
    """
    c = box // 2  # RELION's image origin for even and odd boxes
    y, x = np.mgrid[:box, :box] - c
    # The background is what lies outside the particle disc (hard edge: a pixel on the radius is particle).
    mask = (soft_circular_mask(box, bg_radius, edge_px=0.0) == 0).reshape(-1).astype(np.float64)
    basis = np.stack([np.ones(box * box), x.reshape(-1), y.reshape(-1)]).astype(np.float64)
    weights = (basis * mask).T
    return weights, basis @ weights, basis


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
    weights, gram, basis = _background(box, round(radius, 6))
    flat = images.reshape(-1, box * box)
    wide = flat.astype(np.float64)
    # Sums over the background as matrix products (no gathered copy of the background pixels): Dᵀb and Σb².
    moments = wide @ weights  # (B, 3)
    squares = (wide * wide) @ weights[:, 0]
    n_bg = gram[0, 0]
    if ramp:
        # Least-squares plane on the background: coef = (DᵀD)⁻¹ Dᵀb; its residual sums to 0 (the plane has an
        # intercept) and Σr² = Σb² − coef · Dᵀb.
        coef = np.linalg.solve(gram, moments.T).T
        offset = coef @ basis  # (B, box²): the plane at every pixel
        var = (squares - np.einsum("bk,bk->b", coef, moments)) / n_bg
    else:
        mean = moments[:, 0] / n_bg
        offset = mean[:, None]
        var = squares / n_bg - mean**2
    # Rounding leaves a constant (or exactly planar) background a variance of ~1e-16 of its square, not 0.
    scale = squares / n_bg
    std = np.sqrt(np.where(var > 1e-12 * scale, var, 0.0))
    std[std == 0] = 1.0
    out = (flat - offset.astype(np.float32)) / std[:, None].astype(np.float32)
    return out.reshape(images.shape).astype(np.float32, copy=False)
