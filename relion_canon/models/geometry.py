"""In-plane rotation and shift of image batches on tensors, in RELION's psi convention.

A particle with angle ψ is its ψ = 0 image rotated counter-clockwise by ψ as displayed with row 0 at the
top, i.e. ``scipy.ndimage.rotate(img, +ψ)`` (see product.md, Conventions). Rotation is about the pixel
(box//2, box//2), RELION's image origin. Differentiable (bilinear ``grid_sample``), so models can use it
inside their losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Wrap radians to (−π, π]."""
    return math.pi - torch.remainder(math.pi - theta, 2 * math.pi)


def _base_grid(box: int, device, dtype) -> torch.Tensor:
    """(H, W, 2) pixel offsets (x, y) from RELION's origin."""
    c = box // 2
    r = torch.arange(box, device=device, dtype=dtype) - c
    y, x = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([x, y], dim=-1)


def rotate(images: torch.Tensor, psi: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (B, [C,] H, W) images counter-clockwise by ``psi`` radians (B,), then shift by ``shift`` (B, 2) px (x, y).

    Pixels coming from outside the box are 0.
    """
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    b, _, h, w = x.shape
    if h != w:
        raise ValueError("images must be square")
    grid = _base_grid(h, x.device, x.dtype).expand(b, h, w, 2)
    if shift is not None:
        grid = grid - shift.to(x.dtype)[:, None, None, :]
    # Output pixel p (row down) samples the input at R(−ψ)p; with y pointing down, a counter-clockwise
    # turn on screen is a clockwise turn in (x, y) maths coordinates, hence the signs below.
    cos, sin = torch.cos(psi).to(x.dtype), torch.sin(psi).to(x.dtype)
    gx, gy = grid[..., 0], grid[..., 1]
    sx = cos[:, None, None] * gx - sin[:, None, None] * gy
    sy = sin[:, None, None] * gx + cos[:, None, None] * gy
    c = h // 2
    # grid_sample's normalised coordinates: -1 and 1 are the centres of the corner pixels (align_corners=True).
    norm = torch.stack([(sx + c) / (w - 1) * 2 - 1, (sy + c) / (h - 1) * 2 - 1], dim=-1)
    out = F.grid_sample(x, norm, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1) if squeeze else out


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply (B, [C,] H, W) images by (B, H, W) CTFs given on the unshifted FFT grid (``relion_canon.ctf``)."""
    if images.dim() == 4:
        ctf = ctf.unsqueeze(1)
    spectrum = torch.fft.fft2(images.float())
    return torch.fft.ifft2(spectrum * ctf.float()).real.to(images.dtype)
