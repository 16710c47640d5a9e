"""Correlation windows: the inverse DFT at the shifts a search reads is the inverse FFT's samples there."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_canon.geometry import correlation_window, correlation_windows


@settings(max_examples=30, deadline=None)
@given(half_size=st.integers(2, 40), half_width=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_the_window_is_the_inverse_fft_at_its_shifts(half_size, half_width, seed):
    size = 2 * half_size
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.fft.rfft2(torch.randn(3, size, size, generator=g, dtype=torch.float64))
    # irfft2 ignores the imaginary parts of columns 0 and S/2 where they break Hermitian symmetry; so must the window.
    spectrum[:, 1, 0] += 2j
    spectrum[:, 3 % size, -1] -= 1j
    full = torch.fft.irfft2(spectrum, s=(size, size))
    shifts = torch.arange(-half_width, half_width + 1) % size  # circular, wrapping when the window is wider
    torch.testing.assert_close(correlation_window(spectrum, half_width), full[:, shifts][:, :, shifts])


def test_single_precision_matches_the_fft_to_its_rounding():
    spectrum = torch.fft.rfft2(torch.randn(5, 2, 40, 40))
    full = torch.fft.irfft2(spectrum, s=(40, 40))
    shifts = torch.arange(-4, 5) % 40
    got = correlation_window(spectrum, 4)
    assert got.dtype == torch.float32 and got.shape == (5, 2, 9, 9)
    torch.testing.assert_close(got, full[..., shifts, :][..., shifts], atol=1e-5, rtol=1e-4)


def test_a_spectrum_that_is_not_an_even_squares_rfft2_is_refused():
    with pytest.raises(ValueError, match="even square"):
        correlation_window(torch.zeros(1, 40, 40, dtype=torch.complex64), 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_image_against_every_reference_is_each_pairs_window(dtype):
    g = torch.Generator().manual_seed(2)
    spectra = torch.fft.rfft2(torch.randn(4, 24, 24, generator=g, dtype=dtype))
    references = torch.fft.rfft2(torch.randn(3, 24, 24, generator=g, dtype=dtype))
    got = correlation_windows(spectra, references, 3)
    pairs = correlation_window(spectra[:, None] * references[None].conj(), 3)
    assert got.shape == (4, 3, 7, 7)
    torch.testing.assert_close(got, pairs, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-4)


def test_windows_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="one even square"):
        correlation_windows(torch.zeros(1, 24, 13, dtype=torch.complex64), torch.zeros(1, 26, 14, dtype=torch.complex64), 2)
