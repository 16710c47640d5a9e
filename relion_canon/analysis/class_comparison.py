"""How alike two class averages are, in the terms the classification decides by: laid onto each other by
the best turn and shift (not mirror), compared through each other's Wiener filter, in the units of a
particle's log-likelihood (CTF²/noise-weighted power)."""

from __future__ import annotations

import logging
import math

import torch

from relion_canon.analysis.alignment import SearchGrid
from relion_canon.analysis.alignment_reference import ClassAverage
from relion_canon.geometry import (
    correlation_window,
    periodic_peak,
    rotate,
    sample_polar,
    window_half_width,
    window_peak_and_height,
)

log = logging.getLogger(__name__)

# Two classes are one view when their averages differ by no more than this many times the noise their
# half-sets show. Above 1 because laying one average onto another interpolates it; the measured gap
# between classes of one view and of different views is in benchmarks/classify/README.md.
MERGE_FACTOR = 6.0
# ... or when each class's particles prefer their own class over the other by less than this many nats on
# average (each at its best turn about its centre): the classes are about as alike as two copies of one view
# built from different particles. Distinct views part by tens of nats (benchmarks/classify/README.md).
MERGE_NATS = 8.0


def half_agreement(halves: torch.Tensor) -> torch.Tensor:
    """(K,) correlation of each class's two (K, 2, B, B) half-set averages, in the same frame."""
    a, b = halves[:, 0].flatten(1), halves[:, 1].flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-20)


def align_pairs(references: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, grid: SearchGrid,
                max_shift_px: float = 6.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the pairs (``fixed``, ``moving``) of reference indices (P,), the turn (rad) and shift (px) that
    best lay the moving reference onto the fixed one, and the normalised correlation there: (P,), (P, 2),
    (P,). The turn comes from the magnitudes of their spectra, which no shift changes (known there up to
    sign and a half turn, so the four candidates are tried); the shift from the cross-correlation at that
    turn."""
    magnitude = torch.fft.fftshift(torch.fft.fft2(references).abs(), dim=(-2, -1))
    polar = sample_polar(magnitude, grid.xy)
    polar = (polar - polar.mean(dim=-1, keepdim=True)) * grid.ring_weight.sqrt()
    spectra = torch.fft.rfft(polar, dim=-1)
    corr = torch.fft.irfft(torch.einsum("prf,prf->pf", spectra[fixed].conj(), spectra[moving]),
                           n=grid.angular_samples, dim=-1)
    turn = (periodic_peak(corr)[0] * grid.step_rad).float()
    fixed_fft = torch.fft.rfft2(references[fixed])
    norms = references.flatten(1).norm(dim=1).clamp(min=1e-20)
    n, box = len(fixed), references.shape[-1]
    half = window_half_width(max_shift_px)
    best = torch.full((n,), -2.0)
    best_turn, best_shift = torch.zeros(n), torch.zeros(n, 2)
    for candidate in (turn, -turn, turn + math.pi, -turn + math.pi):
        turned = rotate(references[moving], candidate)
        # The cross-correlation peaks at the shift s (x, y) for which the turned reference moved by s
        # matches the fixed one.
        window = correlation_window(fixed_fft * torch.fft.rfft2(turned).conj(), half)
        shift = window_peak_and_height(window, max_shift_px, box)[0]
        laid = rotate(references[moving], candidate, shift)
        ncc = (laid * references[fixed]).flatten(1).sum(1) / (norms[fixed] * laid.flatten(1).norm(dim=1).clamp(min=1e-20))
        better = ncc > best
        best = torch.where(better, ncc, best)
        best_turn = torch.where(better, candidate, best_turn)
        best_shift = torch.where(better[:, None], shift, best_shift)
    return best_turn, best_shift, best


def filtered(images: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``images`` (..., B, B) multiplied in Fourier space by ``gain`` (..., B, B//2 + 1)."""
    return torch.fft.irfft2(torch.fft.rfft2(images) * gain, s=images.shape[-2:])


def whitened_power(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n,) Σ_f w(f)|X(f)|² / B² over the full Fourier grid: what a particle's log-likelihood sees of ``images``
    (n, B, B), with ``weight`` (B, B) = CTF²/σ² (fft2 layout)."""
    b = images.shape[-1]
    return (torch.fft.fft2(images.double()).abs() ** 2 * weight).sum(dim=(-2, -1)) / b**2


def merge_candidates(
    averages: list[ClassAverage], counts: torch.Tensor, keep: torch.Tensor, margins_nats: torch.Tensor,
    weight: torch.Tensor, grid: SearchGrid,
) -> tuple[torch.Tensor, list[tuple[float, int, int]]]:
    """The (K, K) turn that lays each smaller average onto each larger one (NaN for the pairs not compared),
    and (ratio, smaller, larger) for the pairs of ``keep`` classes that show one view: their averages, laid onto each other, differ by no more than
    :data:`MERGE_FACTOR` times what their own noise explains (from their half-sets), in the units a particle's
    log-likelihood sees them (``weight``, CTF²/noise); or their particles prefer their own class by no more
    than :data:`MERGE_NATS` (``margins_nats`` (K, K)). Each average is compared through the other's Wiener
    filter, so two classes of one view filtered differently (more or fewer particles) still compare equal."""
    references = torch.stack([a.reference for a in averages])
    halves = torch.stack([a.halves for a in averages])
    gains = torch.stack([a.gain for a in averages])[:, grid.rings]  # (K, B, B//2 + 1)
    k = len(references)
    large, small = (i.flatten() for i in torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"))
    # Each unordered pair once, the smaller class (ties: the higher index) laid onto the larger.
    considered = ((small != large) & keep[large] & keep[small]
                  & ((counts[small] < counts[large]) | ((counts[small] == counts[large]) & (small > large))))
    large, small = large[considered], small[considered]
    turn = torch.full((k, k), math.nan)
    if len(large) == 0:
        return turn, []
    pair_turn, pair_shift, _ = align_pairs(references, large, small, grid)
    turn[large, small] = pair_turn
    moved = rotate(references[small], pair_turn, pair_shift)
    noise = torch.stack([halves[large, 0] - halves[large, 1], halves[small, 0] - halves[small, 1]], dim=1) / 2
    distance = whitened_power(filtered(references[large], gains[small]) - filtered(moved, gains[large]), weight)
    # What laying an average onto itself by the same turn loses to interpolation: at high SNR the averages'
    # own noise is tiny and this is what separates two copies of one view.
    there_and_back = rotate(rotate(references[large], pair_turn), -pair_turn)
    floor = whitened_power(filtered(references[large] - there_and_back, gains[small]), weight)
    own = whitened_power(filtered(noise, torch.stack([gains[small], gains[large]], dim=1)), weight).sum(dim=1)
    ratios = (distance - floor) / own.clamp(min=1e-30)
    nats = torch.maximum(margins_nats[small, large], margins_nats[large, small])
    candidates: list[tuple[float, int, int]] = []
    for ratio, nat, s, l in zip(ratios.tolist(), nats.tolist(), small.tolist(), large.tolist()):
        if ratio <= MERGE_FACTOR or nat <= MERGE_NATS:
            log.debug("classification: classes %d and %d alike: averages differ %.1f× their noise, particles "
                      "prefer their own by %.1f nats", s + 1, l + 1, ratio, nat)
            candidates.append((ratio, s, l))
    return turn, candidates
