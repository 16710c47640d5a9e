"""Applying RELION's soft circular particle mask (the mask itself: :func:`relion_canon.geometry.soft_circular_mask`)."""

from __future__ import annotations

import numpy as np

from relion_canon.geometry import soft_circular_mask

__all__ = ["apply_mask"]


def apply_mask(images: np.ndarray, radius: float, edge: float = 3.0, fill: float = 0.0) -> np.ndarray:
    """Multiply by the soft mask, filling the outside with ``fill`` (0 = the normalised background mean)."""
    m = soft_circular_mask(images.shape[-1], float(radius), float(edge))
    return (images * m + fill * (1.0 - m)).astype(np.float32, copy=False)
