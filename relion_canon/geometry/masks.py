"""Circular masks about RELION's image origin, pixel (box//2, box//2), and each pixel's distance from given
centres (discs about where particles sit)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def circular_mask(box: int, radius_px: float, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(box, box) mask, 1 inside ``radius_px`` of the origin, falling linearly to 0 over one pixel (an
    antialiased disc: the pixel whose centre lies on the radius gets ½)."""
    r = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    dist = torch.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    return (radius_px + 0.5 - dist).clamp(0.0, 1.0).to(dtype)


def squared_distance_px(box: int, centres_px: torch.Tensor) -> torch.Tensor:
    """(n, box, box) each pixel's squared distance (px²) from each of the (n, 2) (x, y) centres, in their
    dtype; a disc of radius r about centre i is ``squared_distance_px(box, centres)[i] <= r**2``."""
    grid = torch.arange(box, dtype=centres_px.dtype, device=centres_px.device)
    dx = grid[None, None, :] - centres_px[:, 0, None, None]
    dy = grid[None, :, None] - centres_px[:, 1, None, None]
    return dx ** 2 + dy ** 2


@lru_cache(maxsize=16)
def soft_circular_mask(box: int, radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """(box, box) float32, read-only (cached): 1 inside ``radius_px``, a raised-cosine fall-off to 0 over
    ``edge_px``, 0 outside; RELION's particle mask."""
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    r = np.sqrt(x**2 + y**2)
    mask = np.where(r <= radius_px, 1.0, 0.0)
    if edge_px > 0:
        ramp = (r > radius_px) & (r < radius_px + edge_px)
        mask[ramp] = 0.5 + 0.5 * np.cos(np.pi * (r[ramp] - radius_px) / edge_px)
    mask = mask.astype(np.float32)
    mask.flags.writeable = False  # cached: callers must not modify it
    return mask
