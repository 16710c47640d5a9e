"""Images resampled on polar grids: rings about RELION's image origin, pixel (box//2, box//2).

Ring ρ, sample k lies at angle θ_k = 2πk / n_angles from the +x axis (x right, y down), i.e. at pixel
(c_x + ρ cos θ_k, c_y + ρ sin θ_k). Turning an image by ψ (:func:`relion_canon.geometry.rotate`) moves
what ring sample k saw to angle θ_k + ψ: a rotation is a circular shift along the angle axis, which is
what makes an angular search one FFT per ring.

:func:`sample_polar` (torch, bilinear, batched, zeros outside the box) samples on a :func:`polar_grid`;
:func:`sample_rings` is the NumPy face with a prefiltered spline for analyses that need a small
interpolation error (``relion_canon.analysis.symmetry``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def ring_points_px(radii_px: torch.Tensor, n_angles: int,
                   centre_px: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) pixel coordinates, each (n_rings, n_angles), of the ring samples about ``centre_px`` (x, y),
    in the dtype of ``radii_px``."""
    theta = torch.arange(n_angles, dtype=radii_px.dtype) * (2 * math.pi / n_angles)
    cx, cy = centre_px
    return cx + radii_px[:, None] * torch.cos(theta), cy + radii_px[:, None] * torch.sin(theta)


def polar_grid(box: int, radius_px: float, n_angles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring radii 1 … ⌊radius_px⌋ px and the (n_rings, n_angles, 2) ``grid_sample`` coordinates of their
    samples about box//2, float32."""
    radii = torch.arange(1, int(radius_px) + 1, dtype=torch.float32)
    c = box // 2
    x, y = ring_points_px(radii, n_angles, (c, c))
    # grid_sample's normalised coordinates: -1 and 1 are the centres of the corner pixels (align_corners=True).
    return radii, torch.stack([x / (box - 1) * 2 - 1, y / (box - 1) * 2 - 1], dim=-1)


def sample_polar(images: torch.Tensor, grid: torch.Tensor, centres_px: torch.Tensor | None = None) -> torch.Tensor:
    """(b, H, W) images sampled on a :func:`polar_grid` moved by ``centres_px`` (b, 2) (x, y) → (b, n_rings,
    n_angles)."""
    b, h, w = images.shape
    g = grid.expand(b, *grid.shape)
    if centres_px is not None:
        g = g + (centres_px * (2.0 / (w - 1)))[:, None, None, :]
    return F.grid_sample(images[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def sample_rings(image: np.ndarray, radii_px: np.ndarray, n_angles: int, order: int = 3) -> np.ndarray:
    """(n_rings, n_angles) samples of a 2-D image on rings about (W//2, H//2), float64: a prefiltered spline
    of ``order``, the image extended by its edge values."""
    img = np.asarray(image, dtype=np.float64)
    x, y = ring_points_px(torch.from_numpy(np.asarray(radii_px, dtype=np.float64)), n_angles,
                          (img.shape[1] // 2, img.shape[0] // 2))
    rings = ndimage.map_coordinates(img, [y.numpy().ravel(), x.numpy().ravel()], order=order, mode="nearest")
    return rings.reshape(x.shape)
