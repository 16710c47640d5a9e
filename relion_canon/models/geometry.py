"""In-plane rotation and shift of image batches on tensors, in RELION's psi convention.

A particle with angle ψ is its ψ = 0 image rotated counter-clockwise by ψ as displayed with row 0 at the
top, i.e. ``scipy.ndimage.rotate(img, +ψ)`` (see product.md, Conventions). Rotation is about the pixel
(box//2, box//2), RELION's image origin. Differentiable (bilinear ``grid_sample``), so models can use it
inside their losses.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Wrap radians to (−π, π]."""
    return math.pi - torch.remainder(math.pi - theta, 2 * math.pi)


@functools.lru_cache(maxsize=32)
def _base_grid(box: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(box², 3) normalised output coordinates [u_x, u_y, 1] (``grid_sample``, align_corners=True), row-major."""
    lin = torch.linspace(-1, 1, box, device=device, dtype=dtype)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)


def rotate(images: torch.Tensor, psi: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (B, [C,] H, W) images counter-clockwise by ``psi`` radians (B,), then shift by ``shift`` (B, 2) px (x, y).

    Pixels coming from outside the box are 0.
    """
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    b, ch, h, w = x.shape
    if h != w:
        raise ValueError("images must be square")
    # The grid is u_in = A [u_out, 1]; einsum does that product ~3x faster than F.affine_grid on the CPU.
    grid = torch.einsum("pk,bjk->bpj", _base_grid(h, x.device, x.dtype), _affine(psi, shift, h, x.dtype))
    out = F.grid_sample(x, grid.reshape(b, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1) if squeeze else out


def _affine(psi: torch.Tensor, shift: torch.Tensor | None, box: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices: output pixel p samples the input at c + M(ψ)(p − c − shift).

    With y pointing down, a counter-clockwise turn on screen is a clockwise turn in (x, y) maths
    coordinates, hence M(ψ) = [[cos, −sin], [sin, cos]] sampling. grid_sample's normalised coordinates
    (align_corners=True) are u = a·(pixel) − 1 with a = 2/(box − 1); the centre c = box//2 is not u = 0
    for even boxes, so the translation column carries it: u_in = M u_out + M(1 − a·c − a·shift) + a·c − 1.
    """
    cos, sin = torch.cos(psi).to(dtype), torch.sin(psi).to(dtype)
    a = 2.0 / (box - 1)
    ac = a * (box // 2)
    tx = torch.full_like(cos, 1.0 - ac)
    ty = torch.full_like(cos, 1.0 - ac)
    if shift is not None:
        tx = tx - a * shift[:, 0].to(dtype)
        ty = ty - a * shift[:, 1].to(dtype)
    row0 = torch.stack([cos, -sin, cos * tx - sin * ty + ac - 1.0], dim=-1)
    row1 = torch.stack([sin, cos, sin * tx + cos * ty + ac - 1.0], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply (B, [C,] H, W) images by (B, H, W) CTFs given on the unshifted FFT grid (``relion_canon.ctf``)."""
    if images.dim() == 4:
        ctf = ctf.unsqueeze(1)
    spectrum = torch.fft.fft2(images.float())
    return torch.fft.ifft2(spectrum * ctf.float()).real.to(images.dtype)
