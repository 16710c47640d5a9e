"""How alike two class averages are, in the terms the classification decides by: laid onto each other by
the best turn and shift (not mirror), compared through each other's Wiener filter, in the units of a
particle's log-likelihood (CTF²/noise-weighted power)."""

from __future__ import annotations

import logging
import math

import torch

from relion_canon.analysis.alignment import SearchGrid
from relion_canon.analysis.alignment_reference import ClassAverage
from relion_canon.geometry import periodic_peak, rotate, sample_polar, shift_peak

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


def pair_alignment(references: torch.Tensor, grid: SearchGrid,
                    max_shift_px: float = 6.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every pair (k, l) of references, the turn (rad) and shift (px) that best lay l onto k (turns and
    shifts, not mirrors), and the normalised correlation there: (K, K), (K, K, 2), (K, K). The turn comes
    from the magnitudes of their spectra, which no shift changes (known there up to sign and a half turn, so
    the four candidates are tried); the shift from the cross-correlation at that turn."""
    k = len(references)
    magnitude = torch.fft.fftshift(torch.fft.fft2(references).abs(), dim=(-2, -1))
    polar = sample_polar(magnitude, grid.xy)
    polar = (polar - polar.mean(dim=-1, keepdim=True)) * grid.ring_weight.sqrt()
    spectra = torch.fft.rfft(polar, dim=-1)
    corr = torch.fft.irfft(torch.einsum("irf,jrf->ijf", spectra.conj(), spectra), n=grid.angular_samples, dim=-1)
    turn = (periodic_peak(corr.flatten(0, 1))[0] * grid.step_rad).float()
    fixed, moving = (i.flatten() for i in torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"))
    fixed_fft = torch.fft.rfft2(references[fixed])
    norms = references.flatten(1).norm(dim=1).clamp(min=1e-20)
    best = torch.full((k * k,), -2.0)
    best_turn, best_shift = torch.zeros(k * k), torch.zeros(k * k, 2)
    for candidate in (turn, -turn, turn + math.pi, -turn + math.pi):
        turned = rotate(references[moving], candidate)
        cc = torch.fft.irfft2(fixed_fft * torch.fft.rfft2(turned).conj(), s=references.shape[-2:])
        # cc peaks at the shift s (x, y) for which the turned reference moved by s matches the fixed one.
        shift = shift_peak(cc, max_shift_px)
        laid = rotate(references[moving], candidate, shift)
        ncc = (laid * references[fixed]).flatten(1).sum(1) / (norms[fixed] * laid.flatten(1).norm(dim=1).clamp(min=1e-20))
        better = ncc > best
        best = torch.where(better, ncc, best)
        best_turn = torch.where(better, candidate, best_turn)
        best_shift = torch.where(better[:, None], shift, best_shift)
    return best_turn.reshape(k, k), best_shift.reshape(k, k, 2), best.reshape(k, k)


def filtered(images: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``images`` (..., B, B) multiplied in Fourier space by ``gain`` (..., B, B//2 + 1)."""
    return torch.fft.irfft2(torch.fft.rfft2(images) * gain, s=images.shape[-2:])


def laid(image: torch.Tensor, turn_rad: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    return rotate(image[None], turn_rad[None], shift_px[None])[0]


def whitened_power(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n,) Σ_f w(f)|X(f)|² / B² over the full Fourier grid: what a particle's log-likelihood sees of ``images``
    (n, B, B), with ``weight`` (B, B) = CTF²/σ² (fft2 layout)."""
    b = images.shape[-1]
    return (torch.fft.fft2(images.double()).abs() ** 2 * weight).sum(dim=(-2, -1)) / b**2


def merge_candidates(
    averages: list[ClassAverage], counts: torch.Tensor, keep: torch.Tensor, margins_nats: torch.Tensor,
    weight: torch.Tensor, grid: SearchGrid,
) -> tuple[torch.Tensor, list[tuple[float, int, int]]]:
    """The (K, K) turn that lays each average onto each other, and (ratio, smaller, larger) for the pairs of
    ``keep`` classes that show one view: their averages, laid onto each other, differ by no more than
    :data:`MERGE_FACTOR` times what their own noise explains (from their half-sets), in the units a particle's
    log-likelihood sees them (``weight``, CTF²/noise); or their particles prefer their own class by no more
    than :data:`MERGE_NATS` (``margins_nats`` (K, K)). Each average is compared through the other's Wiener
    filter, so two classes of one view filtered differently (more or fewer particles) still compare equal."""
    references = torch.stack([a.reference for a in averages])
    halves = torch.stack([a.halves for a in averages])
    gains = torch.stack([a.gain for a in averages])[:, grid.rings]  # (K, B, B//2 + 1)
    turn, shift, _ = pair_alignment(references, grid)
    candidates: list[tuple[float, int, int]] = []
    for large in range(len(references)):
        for small in range(len(references)):
            if small == large or not keep[large] or not keep[small] or counts[small] > counts[large] or \
                    (counts[small] == counts[large] and small < large):
                continue
            pair = torch.stack([references[large], laid(references[small], turn[large, small], shift[large, small])])
            noise = torch.stack([halves[large, 0] - halves[large, 1], halves[small, 0] - halves[small, 1]]) / 2
            cross = gains[[small, large]]  # each through the other's filter
            distance = whitened_power((filtered(pair[0], cross[0]) - filtered(pair[1], cross[1]))[None], weight)[0]
            # What laying an average onto itself by the same turn loses to interpolation: at high SNR the
            # averages' own noise is tiny and this is what separates two copies of one view.
            there_and_back = laid(laid(references[large], turn[large, small], torch.zeros(2)),
                                  -turn[large, small], torch.zeros(2))
            floor = whitened_power(filtered(references[large] - there_and_back, cross[0])[None], weight)[0]
            own = whitened_power(filtered(noise, cross), weight).sum()
            ratio = float(distance - floor) / max(float(own), 1e-30)
            nats = max(float(margins_nats[small, large]), float(margins_nats[large, small]))
            if ratio <= MERGE_FACTOR or nats <= MERGE_NATS:
                log.debug("classification: classes %d and %d alike: averages differ %.1f× their noise, particles "
                          "prefer their own by %.1f nats", small + 1, large + 1, ratio, nats)
                candidates.append((ratio, small, large))
    return turn, candidates
