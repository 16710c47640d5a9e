"""A circular mask with a raised-cosine soft edge, as RELION applies to particles."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def soft_circular_mask(box: int, radius: float, edge: float = 3.0) -> np.ndarray:
    """(box, box) float32: 1 inside ``radius`` px, cosine fall-off to 0 over ``edge`` px, 0 outside."""
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    r = np.sqrt(x**2 + y**2)
    mask = np.where(r <= radius, 1.0, 0.0)
    if edge > 0:
        ramp = (r > radius) & (r < radius + edge)
        mask[ramp] = 0.5 + 0.5 * np.cos(np.pi * (r[ramp] - radius) / edge)
    mask = mask.astype(np.float32)
    mask.flags.writeable = False  # cached: callers must not modify it
    return mask


def apply_mask(images: np.ndarray, radius: float, edge: float = 3.0, fill: float = 0.0) -> np.ndarray:
    """Multiply by the soft mask, filling the outside with ``fill`` (0 = the normalised background mean)."""
    m = soft_circular_mask(images.shape[-1], float(radius), float(edge))
    return (images * m + fill * (1.0 - m)).astype(np.float32, copy=False)
