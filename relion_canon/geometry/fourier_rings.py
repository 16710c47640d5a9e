"""Fourier rings of square images on the rfft2 grid: ring index, ring means, FRC and resolution, and how
often each rfft2 column counts in the full plane.

Ring k holds the coefficients whose spatial frequency, in cycles per box, rounds to k; rings beyond the
Nyquist ring box//2 (the corners) are folded into it, so there are box//2 + 1 rings.
"""

from __future__ import annotations

import numpy as np
import torch

FRC_THRESHOLD = 0.143  # the half-set criterion (Rosenthal & Henderson 2003)


def ring_index(box: int) -> torch.Tensor:
    """Ring number of every coefficient of a (box, box//2 + 1) rfft2 grid."""
    ky = torch.fft.fftfreq(box) * box
    kx = torch.fft.rfftfreq(box) * box
    r = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return torch.round(r).long().clamp(max=box // 2)


def column_multiplicity(box: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(box//2 + 1,) how often each rfft2 column stands in the full plane: twice (itself and its conjugate twin),
    but once for column 0 and, for an even box, column box//2 (their own twins)."""
    weight = torch.full((box // 2 + 1,), 2.0, dtype=dtype)
    weight[0] = 1.0
    if box % 2 == 0:
        weight[-1] = 1.0
    return weight


def ring_mean(values: torch.Tensor, rings: torch.Tensor, n_rings: int) -> torch.Tensor:
    """Mean over each ring of (..., H, W//2+1) real values → (..., n_rings); empty rings give 0."""
    flat = values.reshape(*values.shape[:-2], -1)
    idx = rings.reshape(-1).expand_as(flat)
    sums = torch.zeros(*flat.shape[:-1], n_rings, dtype=flat.dtype).scatter_add_(-1, idx, flat)
    counts = torch.bincount(rings.reshape(-1), minlength=n_rings).to(flat.dtype)
    return sums / counts.clamp(min=1)


def fourier_ring_correlation(a: torch.Tensor, b: torch.Tensor, rings: torch.Tensor, n_rings: int) -> torch.Tensor:
    """(n_rings,) FRC of two (H, W//2+1) rfft2 spectra, in [−1, 1]."""
    cross = ring_mean((a * b.conj()).real, rings, n_rings)
    pa = ring_mean(a.abs() ** 2, rings, n_rings)
    pb = ring_mean(b.abs() ** 2, rings, n_rings)
    return (cross / torch.sqrt(pa * pb).clamp(min=1e-20)).clamp(-1, 1)


def resolution_at_threshold_A(frc: np.ndarray, pixel_size_A: float, box: int,
                              threshold: float = FRC_THRESHOLD) -> float:
    """Resolution (Å) of the first ring after ring 0 whose FRC is below ``threshold`` and stays below it on the
    next ring (Nyquist if none). A dip of one ring is no limit: the lowest rings hold a dozen coefficients, so
    their FRC is noisy, and where the CTF passes almost nothing at very low frequency a small class's FRC can
    fall to zero there and recover above it."""
    below = np.asarray(frc)[1:] < threshold
    stays = below & np.append(below[1:], True)  # the last ring has no next one to recover on
    crossing = np.flatnonzero(stays)
    ring = (crossing[0] + 1) if crossing.size else len(frc) - 1
    return float(box * pixel_size_A / max(ring, 1))
