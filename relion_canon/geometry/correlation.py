"""Circular cross-correlations read only where a search looks: near zero shift.

A translational search under a prior reads a few samples about zero shift of each cross-correlation, yet an
inverse FFT computes all of them. The samples it needs are a small inverse DFT, done as two matrix products
(one per axis) on the rfft2-layout cross-power spectrum, which is cheaper for the window of a search.
"""

from __future__ import annotations

import functools
import math

import torch


def correlation_window(cross_spectrum: torch.Tensor, half_width: int) -> torch.Tensor:
    """``torch.fft.irfft2(cross_spectrum, s=(S, S))`` at the shifts −h…h per axis (h = ``half_width``, rows y,
    columns x): (..., S, S//2 + 1) complex → (..., 2h + 1, 2h + 1) real. S, the even size of the square
    correlation, is read from the rows; shifts are circular (−1 is the sample at S − 1)."""
    size, n_columns = cross_spectrum.shape[-2:]
    if n_columns != size // 2 + 1 or size % 2:
        raise ValueError(f"correlation_window takes the rfft2 of an even square; got {tuple(cross_spectrum.shape)}")
    along_y, along_x = _bases(size, half_width, cross_spectrum.dtype, cross_spectrum.device)
    rows = torch.matmul(along_y, cross_spectrum)  # (..., 2h + 1, S//2 + 1): inverse DFT over y at the window
    # The real part of rows @ along_x, from the interleaved (re, im) pairs as one real product.
    return torch.view_as_real(rows).flatten(-2) @ along_x


@functools.lru_cache(maxsize=32)
def _bases(size: int, half_width: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse DFT's matrices for :func:`correlation_window`: over y, (2h + 1, S) complex; over x, on the
    half spectrum, (2 (S//2 + 1), 2h + 1) real acting on interleaved (re, im) pairs. irfft's convention: the
    columns other than 0 and S/2 stand for their conjugate twins too (weight 2), and the imaginary parts of
    columns 0 and S/2 are ignored (their real parts alone enter)."""
    shifts = torch.arange(-half_width, half_width + 1, dtype=torch.float64)
    ky = torch.arange(size, dtype=torch.float64)
    along_y = torch.polar(torch.ones(len(shifts), size, dtype=torch.float64),
                          2 * math.pi * shifts[:, None] * ky[None, :] / size)
    kx = torch.arange(size // 2 + 1, dtype=torch.float64)
    weight = torch.full_like(kx, 2.0)
    weight[[0, -1]] = 1.0
    phase = 2 * math.pi * kx[:, None] * shifts[None, :] / size
    scale = weight[:, None] / size**2
    along_x = torch.stack([scale * torch.cos(phase), -scale * torch.sin(phase)], dim=1).flatten(0, 1)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return along_y.to(dtype=dtype, device=device), along_x.to(dtype=real, device=device)
