"""Smooth test images: bilinear interpolation of a smooth image errs little, so conventions can be compared."""

from __future__ import annotations

import numpy as np


def blobs(box: int, seed: int, n: int = 6, sigma_px: float = 4.0, reach: float = 0.3) -> np.ndarray:
    """(box, box) float64 sum of Gaussian blobs within ``reach`` × box of pixel box//2, asymmetric."""
    rng = np.random.default_rng(seed)
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    img = np.zeros((box, box))
    for cx, cy, w in zip(rng.uniform(-reach, reach, n) * box, rng.uniform(-reach, reach, n) * box,
                         rng.uniform(0.5, 1.5, n)):
        img += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma_px**2))
    return img


def blob_at(box: int, x_px: float, y_px: float, sigma_px: float = 1.5) -> np.ndarray:
    """(box, box) float64 Gaussian centred on pixel coordinates (x right, y down)."""
    y, x = np.mgrid[:box, :box]
    return np.exp(-((x - x_px) ** 2 + (y - y_px) ** 2) / (2 * sigma_px**2))


def centroid_px(img: np.ndarray) -> tuple[float, float]:
    """(x, y) intensity centroid in pixel coordinates."""
    y, x = np.mgrid[: img.shape[0], : img.shape[1]]
    total = img.sum()
    return float((x * img).sum() / total), float((y * img).sum() / total)


def disc(box: int, radius_px: float) -> np.ndarray:
    """Boolean (box, box): pixels within ``radius_px`` of pixel box//2."""
    y, x = np.mgrid[:box, :box] - box // 2
    return x**2 + y**2 <= radius_px**2
