"""Per-particle defocus from the particle itself: the defocus whose CTF makes the aligned reference match it best.

Once every particle is aligned to a canonical reference (``analysis.alignment``), the particle's Fourier
transform X should equal CTF_d · R, R being the reference turned and shifted onto the particle. The
defocus d is scored by the normalised correlation

    S(d) = Σ_k Re(X conj R) C_d / σ²  /  √(Σ_k |R|² C_d² / σ²),

maximal at the true d whatever the particle's contrast. Evaluating C_d on every pixel for hundreds of
candidate d per particle would be slow, so the phase is split as χ = πλ·d·k² + g(k), where g holds
astigmatism (the STAR's U − V difference and angle, kept fixed), Cs, amplitude contrast and phase shift
and does not depend on d. Then sin(πλ d s + g) = sin(πλ d s)·cos g + cos(πλ d s)·sin g with s = k², and
every sum over pixels becomes a sum over fine bins of s of per-particle coefficients, times a table of
sin/cos(πλ d s) shared by all particles: one matrix product per batch.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from relion_canon.analysis.alignment import Alignment
from relion_canon.ctf import CtfParams, ctf_2d, electron_wavelength
from relion_canon.geometry import parabolic_height, parabolic_offset, ring_index, rotate
from relion_canon.parallel import merged_rows, owned, share

N_BINS = 1024  # bins of k²: πλ·d·Δs stays below 0.1 rad for d up to 5 µm at Nyquist


def fit_defocus(
    batches: Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]],
    alignment: Alignment,
    ctf: CtfParams,
    pixel_size: np.ndarray,
    box: int,
    search: tuple[float, float] | None = None,
    step: float = 50.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean defocus (Å) of every particle and the peak correlation, from its fit to the aligned reference.

    ``search`` is the (min, max) range of mean defocus tried, in Å; by default the STAR's own range
    widened by 5,000 Å each side. The astigmatism (U − V, angle) of the STAR is kept.
    """
    n = len(ctf)
    pixel_size = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (n,))
    mean_in = 0.5 * (ctf.defocus_u + ctf.defocus_v)
    if search is None:
        search = (max(0.0, float(mean_in.min()) - 5000.0), float(mean_in.max()) + 5000.0)
    candidates = np.arange(search[0], search[1] + step, step)
    rings = ring_index(box)
    noise = torch.from_numpy(alignment.noise).float().clamp(min=1e-12)[rings].numpy()
    reference = torch.from_numpy(alignment.reference).float()
    estimate = np.full(n, np.nan)
    peak = np.full(n, np.nan)
    tables = _Tables(candidates)
    # Under torchrun each process fits its share, and the fits are joined (relion_canon.parallel).
    mine = share(n)
    for idx, images in batches() if len(mine) == n else batches(mine):
        spectra = torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        turned = rotate(reference.expand(len(idx), box, box), torch.from_numpy(np.deg2rad(alignment.psi[idx])).float(),
                        torch.from_numpy(alignment.shift[idx]).float())
        ref_spectra = torch.fft.rfft2(turned)
        cross = (spectra * ref_spectra.conj()).real.numpy().astype(np.float64) / noise
        power = (ref_spectra.abs() ** 2).numpy().astype(np.float64) / noise
        for value in np.unique(pixel_size[idx]):
            sel = pixel_size[idx] == value
            rows = idx[sel]
            scores = _scores(cross[sel], power[sel], ctf.take(rows), float(value), box, tables)
            best = scores.argmax(axis=1)
            estimate[rows], peak[rows] = _refine(candidates, scores, best)
    return merged_rows(estimate, owned(n)), merged_rows(peak, owned(n))


class _Tables:
    """sin/cos(πλ d s) and sin/cos(2πλ d s) for every candidate d and bin centre s: they depend only on the
    wavelength and the bins (the pixel size), not on the particle, so each is built once per job."""

    def __init__(self, candidates: np.ndarray):
        self.candidates = candidates
        self._made: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, wavelength: float, s_max: float) -> tuple[np.ndarray, np.ndarray]:
        key = (wavelength, s_max)
        if key not in self._made:
            centres = (np.arange(N_BINS) + 0.5) / N_BINS * s_max
            phase = np.pi * wavelength * self.candidates[:, None] * centres[None, :]  # (n_d, N_BINS): a = πλ d s
            # Stacked so each score term is one matrix product: [sin a; cos a] and [cos 2a; −sin 2a].
            numer = np.concatenate([np.sin(phase), np.cos(phase)], axis=1).T
            denom = np.concatenate([np.cos(2 * phase), -np.sin(2 * phase)], axis=1).T
            # float32: the sums run over ~10³ bins of noisy terms, far coarser than float32's rounding.
            self._made[key] = (np.ascontiguousarray(numer, np.float32), np.ascontiguousarray(denom, np.float32))
        return self._made[key]


def _scores(cross: np.ndarray, power: np.ndarray, ctf: CtfParams, pixel_size: float, box: int,
            tables: _Tables) -> np.ndarray:
    """(b, n_candidates) normalised correlations for particles sharing one pixel size."""
    half = 0.5 * (ctf.defocus_u - ctf.defocus_v)
    # g: the phase at zero mean defocus (astigmatism, Cs, amplitude contrast, phase shift), per pixel.
    g = ctf_2d(box, pixel_size, half, -half, ctf.defocus_angle, ctf.voltage, ctf.cs, ctf.amplitude_contrast,
               ctf.phase_shift, rfft=True, phase_only=True)
    kx = np.fft.rfftfreq(box, d=pixel_size)
    ky = np.fft.fftfreq(box, d=pixel_size)
    s = ky[:, None] ** 2 + kx[None, :] ** 2
    s_max = float(s.max())
    bins = np.minimum((s / s_max * N_BINS).astype(np.int64), N_BINS - 1).reshape(-1)
    envelope = np.exp(-ctf.bfactor[:, None, None] * s / 4.0)  # B-factor: does not depend on d
    cross = cross * envelope
    power = power * envelope**2
    b = len(cross)

    def binned(values: np.ndarray) -> np.ndarray:  # (b, H, W) → (b, N_BINS) sums per bin of k²
        index = (np.arange(b)[:, None] * N_BINS + bins[None, :]).reshape(-1)
        return np.bincount(index, weights=values.reshape(-1), minlength=b * N_BINS).reshape(b, N_BINS)

    cos_g, sin_g = np.cos(g), np.sin(g)
    # [Σ cross·cos g, Σ cross·sin g] and [Σ|R|² cos 2g, Σ|R|² sin 2g] per bin, side by side for the products.
    a = np.concatenate([binned(cross * cos_g), binned(cross * sin_g)], axis=1).astype(np.float32)
    e = np.concatenate([binned(power * (cos_g**2 - sin_g**2)), binned(power * (2 * sin_g * cos_g))],
                       axis=1).astype(np.float32)
    total = power.reshape(b, -1).sum(axis=1)
    lam = electron_wavelength(ctf.voltage)  # (b,): optics groups may differ in voltage
    scores = np.empty((b, len(tables.candidates)))
    for value in np.unique(lam):
        sel = lam == value
        numer_table, denom_table = tables(float(value), s_max)
        # Σ cross·sin(a + g) = Σ cross (sin a cos g + cos a sin g).
        numer = a[sel] @ numer_table
        # Σ|R|² sin²(a + g) = ½(Σ|R|² − Σ|R|² cos(2a + 2g)), cos(2a + 2g) = cos 2a cos 2g − sin 2a sin 2g.
        cos2 = e[sel] @ denom_table
        scores[sel] = numer / np.sqrt(np.clip(0.5 * (total[sel, None] - cos2), 1e-20, None))
    return scores


def _refine(candidates: np.ndarray, scores: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parabolic interpolation of each row's peak (edges left on the grid)."""
    rows = np.arange(len(best))
    inner = (best > 0) & (best < len(candidates) - 1)
    i = np.clip(best, 1, len(candidates) - 2)
    ym, y0, yp = (torch.from_numpy(np.ascontiguousarray(scores[rows, j], dtype=np.float64)) for j in (i - 1, i, i + 1))
    delta = parabolic_offset(ym, y0, yp)
    height = parabolic_height(ym, y0, yp, delta).numpy()
    delta = np.where(inner, delta.numpy(), 0.0)
    step = candidates[1] - candidates[0] if len(candidates) > 1 else 0.0
    return candidates[best] + delta * step, np.where(inner, height, scores[rows, best])
