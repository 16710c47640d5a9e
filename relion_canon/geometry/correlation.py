"""Circular cross-correlations read only where a search looks: near zero shift.

A translational search under a prior reads a few samples about zero shift of each cross-correlation, yet an
inverse FFT computes all of them. The samples it needs are a small inverse DFT, done as two matrix products
(one per axis) on the rfft2-layout cross-power spectrum, which is cheaper for the window of a search.
"""

from __future__ import annotations

import functools
import math

import torch

from relion_canon.geometry.fourier_rings import column_multiplicity


def correlation_window(cross_spectrum: torch.Tensor, half_width: int) -> torch.Tensor:
    """``torch.fft.irfft2(cross_spectrum, s=(S, S))`` at the shifts −h…h per axis (h = ``half_width``, rows y,
    columns x): (..., S, S//2 + 1) complex → (..., 2h + 1, 2h + 1) real. S, the even size of the square
    correlation, is read from the rows; shifts are circular (−1 is the sample at S − 1)."""
    size = _even_square(cross_spectrum)
    along_y, along_x = _bases(size, half_width, cross_spectrum.dtype, cross_spectrum.device)
    rows = torch.matmul(along_y, cross_spectrum)  # (..., 2h + 1, S//2 + 1): inverse DFT over y at the window
    # The real part of rows @ along_x, from the interleaved (re, im) pairs as one real product.
    return torch.view_as_real(rows).flatten(-2) @ along_x


def _even_square(*spectra: torch.Tensor) -> int:
    """The size S of the even square whose rfft2 (..., S, S//2 + 1) every one of ``spectra`` is."""
    size, n_columns = spectra[0].shape[-2:]
    if n_columns != size // 2 + 1 or size % 2 or any(s.shape[-2:] != spectra[0].shape[-2:] for s in spectra):
        raise ValueError(f"correlation windows take rfft2s of one even square; got "
                         f"{', '.join(str(tuple(s.shape)) for s in spectra)}")
    return size


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
    weight = column_multiplicity(size, torch.float64)
    phase = 2 * math.pi * kx[:, None] * shifts[None, :] / size
    scale = weight[:, None] / size**2
    along_x = torch.stack([scale * torch.cos(phase), -scale * torch.sin(phase)], dim=1).flatten(0, 1)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return along_y.to(dtype=dtype, device=device), along_x.to(dtype=real, device=device)


def correlation_windows(spectra: torch.Tensor, references: torch.Tensor, half_width: int) -> torch.Tensor:
    """:func:`correlation_window` of every image against every reference: (b, S, S//2 + 1) and (R, S, S//2 + 1)
    rfft2 spectra → (b, R, 2h + 1, 2h + 1), the windows of irfft2(spectrum · conj(reference)). The same sums,
    ordered so that the reference side is one matrix product per frequency column for all images at once,
    without forming every product spectrum."""
    size = _even_square(spectra, references)
    n_columns = size // 2 + 1
    along_y, along_x = _bases(size, half_width, spectra.dtype, spectra.device)
    b, r, w = len(spectra), len(references), 2 * half_width + 1
    # (columns, b·w, S): each image's rows weighted by the inverse DFT over y, per column.
    modulated = (along_y[None, :, :, None] * spectra[:, None]).permute(3, 0, 1, 2).reshape(n_columns, b * w, size)
    rows = torch.bmm(modulated, references.conj().permute(2, 1, 0))  # (columns, b·w, R): summed over y
    rows = rows.reshape(n_columns, b, w, r).permute(1, 3, 2, 0).contiguous()  # (b, R, w, columns)
    return torch.view_as_real(rows).flatten(-2) @ along_x
