"""The reference of :mod:`relion_canon.analysis.alignment`: half-set sums of the particles turned back to the
canonical frame, and the Wiener-filtered average they give; and the noise spectrum the particles are
whitened by.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from relion_canon.geometry import canonicalising_shift_px, fourier_ring_correlation, ring_mean, rotate


class HalfSetSums:
    """Sums of CTF-weighted particles turned back to the canonical frame, for two half-sets."""

    def __init__(self, box: int, n_rings: int):
        # Real-space sums: the Fourier transform is linear, so one rfft2 of each sum (in ``reference``)
        # replaces one per particle.
        self.num = torch.zeros(2, box * box, dtype=torch.float64)
        self.den = torch.zeros(2, n_rings, dtype=torch.float64)
        self.box = box

    def add(self, indices: np.ndarray, weighted: torch.Tensor, ctf2_rings: torch.Tensor, psi: torch.Tensor,
            shift: torch.Tensor) -> None:
        # The particle is rotate(canonical, ψ, s): its origin is −s, which canonicalisation undoes.
        canonical = rotate(weighted, -psi, canonicalising_shift_px(psi, -shift))
        # (2, b) one-hot half-set membership: one matrix product sums each half.
        half = torch.from_numpy(np.asarray(indices) % 2)
        member = torch.stack([half == 0, half == 1]).to(canonical.dtype)
        self.num += (member @ canonical.reshape(len(half), -1)).double()
        self.den += (member.double() @ ctf2_rings.double())

    def reference(self, rings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Wiener-filtered canonical average (real space, masked) and the half-set FRC."""
        n_rings = self.den.shape[1]
        den = self.den.clamp(min=1e-6).float()
        num = torch.fft.rfft2(self.num.reshape(2, self.box, self.box)).to(torch.complex64)
        halves = num / den[:, rings]
        frc = fourier_ring_correlation(halves[0], halves[1], rings, n_rings)
        f = frc.clamp(1e-3, 0.999)
        ssnr = 2 * f / (1 - f)  # of the full average: twice the half-set SSNR
        gain = ssnr / (1 + ssnr)
        full = num.sum(dim=0) / self.den.sum(dim=0).clamp(min=1e-6).float()[rings]
        ref = torch.fft.irfft2(full * gain[rings], s=mask.shape) * mask
        return ref, frc.numpy()


def noise_spectrum(images: Iterable[np.ndarray], n_particles: int, rings: torch.Tensor, n_rings: int) -> torch.Tensor:
    """(B//2 + 1,) noise power per Fourier ring (rfft2 units) from the particles' mean power: at low SNR
    the power is mostly noise. ``images``: every particle once, in (b, B, B) batches."""
    power = torch.zeros(n_rings, dtype=torch.float64)
    for batch in images:
        power += ring_mean(torch.fft.rfft2(torch.from_numpy(batch)).abs() ** 2, rings, n_rings).sum(0).double()
    # A floor: where the particles hold no power at all (noise-free images of a map coarser than the pixels,
    # or Fourier-padded ones) whitening would otherwise blow rounding errors up into the whole signal.
    noise = (power / n_particles).float()
    return noise.clamp(min=max(float(noise[1:].max()) * 1e-3, 1e-12))
