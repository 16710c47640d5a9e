"""In-plane rotation and shift of images in RELION's psi convention: one map, two interpolators.

Convention (product.md, Conventions): a particle with angle ψ is its ψ = 0 image turned counter-clockwise
by ψ as displayed with row 0 at the top, i.e. ``scipy.ndimage.rotate(img, +ψ)``, but about the pixel
(box//2, box//2), RELION's image origin (scipy turns about (box − 1)/2, half a pixel off for even boxes).
With pixel coordinates p = (x right, y down) the output pixel p of a turn by ψ followed by a shift s reads
the input at

    c_in + M(ψ) (p − c_out − s),    M(ψ) = [[cos ψ, −sin ψ], [sin ψ, cos ψ]],

c being each box's centre pixel (y pointing down makes a counter-clockwise turn on screen a clockwise one
in (x, y) maths coordinates, hence M(ψ) rather than its inverse).

:func:`rotate` (torch, bilinear ``grid_sample``, differentiable, zeros outside the box) is the
implementation; :func:`rotate_images` and :func:`canonicalise` are its NumPy face in degrees. Their
``order=1`` runs :func:`rotate` in float64; ``order`` ≥ 2 is scipy's prefiltered spline of that order on
the same map, an option kept for callers that want an interpolation error far below bilinear's (tests,
evaluation); it reads 0 outside ``[0, box − 1]`` where bilinear fades to 0 over the pixel beyond the edge.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@functools.lru_cache(maxsize=32)
def _base_grid(box: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(box², 3) normalised output coordinates [u_x, u_y, 1] (``grid_sample``, align_corners=True), row-major."""
    lin = torch.linspace(-1, 1, box, device=device, dtype=dtype)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)


def rotate(
    images: torch.Tensor, psi_rad: torch.Tensor, shift_px: torch.Tensor | None = None, out_size: int | None = None
) -> torch.Tensor:
    """Turn (B, [C,] H, W) images counter-clockwise by ``psi_rad`` (B,), then shift by ``shift_px`` (B, 2) (x, y).

    ``out_size`` samples the central ``out_size``² of the result directly (default: the input's size).
    Pixels coming from outside the box are 0.
    """
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    b, ch, h, w = x.shape
    if h != w:
        raise ValueError("images must be square")
    size = h if out_size is None else int(out_size)
    # The grid is u_in = A [u_out, 1]; einsum does that product ~3x faster than F.affine_grid on the CPU.
    grid = torch.einsum("pk,bjk->bpj", _base_grid(size, x.device, x.dtype), _affine(psi_rad, shift_px, h, size, x.dtype))
    out = F.grid_sample(x, grid.reshape(b, size, size, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1) if squeeze else out


def _affine(psi_rad: torch.Tensor, shift_px: torch.Tensor | None, box_in: int, box_out: int,
            dtype: torch.dtype) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices of the module docstring's map.

    grid_sample's normalised coordinates (align_corners=True) are u = a·(pixel) − 1 with a = 2/(box − 1);
    the centre c = box//2 is not u = 0 for even boxes, so the translation column carries it:
    u_in = r M u_out + r M(1 − a_out·c_out − a_out·s) + a_in·c_in − 1, r = a_in / a_out (1 for equal boxes).
    """
    cos, sin = torch.cos(psi_rad).to(dtype), torch.sin(psi_rad).to(dtype)
    a_out = 2.0 / (box_out - 1)
    ac_out = a_out * (box_out // 2)
    ac_in = 2.0 / (box_in - 1) * (box_in // 2)
    tx = torch.full_like(cos, 1.0 - ac_out)
    ty = torch.full_like(cos, 1.0 - ac_out)
    if shift_px is not None:
        tx = tx - a_out * shift_px[:, 0].to(dtype)
        ty = ty - a_out * shift_px[:, 1].to(dtype)
    if box_in != box_out:  # only then: equal boxes keep the exact arithmetic the models were trained with
        ratio = (box_out - 1) / (box_in - 1)
        cos, sin = cos * ratio, sin * ratio
    row0 = torch.stack([cos, -sin, cos * tx - sin * ty + ac_in - 1.0], dim=-1)
    row1 = torch.stack([sin, cos, sin * tx + cos * ty + ac_in - 1.0], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def turn_vectors(vectors_px: torch.Tensor, psi_rad: torch.Tensor) -> torch.Tensor:
    """(B, 2) vectors (x, y) turned counter-clockwise on screen by ``psi_rad`` (B,): M(ψ)·v."""
    cos, sin = torch.cos(psi_rad), torch.sin(psi_rad)
    return torch.stack([cos * vectors_px[:, 0] - sin * vectors_px[:, 1],
                        sin * vectors_px[:, 0] + cos * vectors_px[:, 1]], dim=-1)


def canonicalising_shift_px(psi_rad: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """The ``rotate`` shift that, with angle −ψ, shifts by +origin and then turns back by ψ (RELION's
    canonicalisation): I(c + M(−ψ)(p − c) − o) = rotate(I, −ψ, M(ψ)·o)."""
    return turn_vectors(origin_px, psi_rad)


def rotate_images(
    images: np.ndarray,
    psi_deg: np.ndarray,
    order: int = 1,
    shift_px: np.ndarray | None = None,
    out_size: int | None = None,
) -> np.ndarray:
    """NumPy face of :func:`rotate`: (n, box, box) images turned by ``psi_deg`` (n,) then shifted by
    ``shift_px`` (n, 2) (x, y); ``order`` 1 is bilinear (:func:`rotate`), ≥ 2 a spline (module docstring)."""
    images = np.asarray(images)
    n, box = len(images), images.shape[-1]
    size = box if out_size is None else int(out_size)
    psi = np.broadcast_to(np.asarray(psi_deg, dtype=np.float64), (n,))
    shift = None if shift_px is None else np.asarray(shift_px, dtype=np.float64).reshape(n, 2)
    if order == 1:
        out = rotate(torch.from_numpy(images.astype(np.float64)), torch.from_numpy(np.deg2rad(psi)),
                     None if shift is None else torch.from_numpy(shift), size)
        return out.numpy().astype(images.dtype)
    out = np.empty((n, size, size), dtype=images.dtype)
    centre_in = np.array([box // 2, box // 2], dtype=np.float64)
    centre_out = np.array([size // 2, size // 2], dtype=np.float64)
    for i, angle in enumerate(np.deg2rad(psi)):
        c, s = np.cos(angle), np.sin(angle)
        # M(ψ) in (row, col) order: affine_transform reads the input at m @ output + offset.
        m = np.array([[c, s], [-s, c]])
        moved = centre_out if shift is None else centre_out + shift[i, ::-1]
        out[i] = ndimage.affine_transform(images[i], m, offset=centre_in - m @ moved, output_shape=(size, size),
                                          order=order, mode="constant")
    return out


def canonicalise(
    images: np.ndarray, psi_deg: np.ndarray, origin_px: np.ndarray, order: int = 1, out_size: int | None = None
) -> np.ndarray:
    """Undo origin and psi (product convention): shift by +origin (n, 2) px (x, y), then turn by −psi, about
    ``box // 2``, in one resampling. ``out_size`` crops to the central ``out_size``² (sampled directly)."""
    psi = np.broadcast_to(np.asarray(psi_deg, dtype=np.float64), (len(images),))
    shift = canonicalising_shift_px(torch.from_numpy(np.deg2rad(psi)),
                                    torch.from_numpy(np.asarray(origin_px, dtype=np.float64).reshape(-1, 2)))
    return rotate_images(images, -psi, order=order, shift_px=shift.numpy(), out_size=out_size)
