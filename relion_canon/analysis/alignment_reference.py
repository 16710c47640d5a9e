"""The reference of :mod:`relion_canon.analysis.alignment`: half-set sums of the particles turned back to the
canonical frame, and the Wiener-filtered average they give; and the noise spectrum the particles are
whitened by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from relion_canon.geometry import canonicalising_shift_px, fourier_ring_correlation, ring_mean, rotate
from relion_canon.parallel import summed


class HalfSetSums:
    """Sums of CTF-weighted particles turned back to the canonical frame, for two half-sets of each of
    ``n_classes`` classes (one: the single reference of an alignment)."""

    def __init__(self, box: int, n_rings: int, n_classes: int = 1):
        # Real-space sums: the Fourier transform is linear, so one rfft2 of each sum (in ``reference``)
        # replaces one per particle. Row 2c + h holds half-set h of class c.
        self.num = torch.zeros(2 * n_classes, box * box, dtype=torch.float64)
        self.den = torch.zeros(2 * n_classes, n_rings, dtype=torch.float64)
        self.box = box
        self.n_classes = n_classes

    def add(self, indices: np.ndarray, weighted: torch.Tensor, ctf2_rings: torch.Tensor, psi: torch.Tensor,
            shift: torch.Tensor, classes: torch.Tensor | None = None) -> None:
        """Add a batch at its poses; ``classes`` (b,) class indices, required with more than one class."""
        canonical = turned_back(weighted, psi, shift)
        half = torch.from_numpy(np.asarray(indices) % 2)
        if classes is None:
            # (2, b) one-hot half-set membership: one matrix product sums each half.
            member = torch.stack([half == 0, half == 1]).to(canonical.dtype)
        else:
            member = torch.nn.functional.one_hot(2 * classes.long() + half, 2 * self.n_classes).T.to(canonical.dtype)
        self.num += (member @ canonical.reshape(len(half), -1)).double()
        self.den += (member.double() @ ctf2_rings.double())

    def summed_over_processes(self) -> "HalfSetSums":
        """These sums added up over the job's processes (:mod:`relion_canon.parallel`), each of which added the
        particles it read; unchanged in a single process."""
        summed(self.num)
        summed(self.den)
        return self

    def unfiltered_spectra(self, rings: torch.Tensor) -> torch.Tensor:
        """(K, B, B//2 + 1) every class's CTF-corrected average (both half-sets), unfiltered, as an rfft2."""
        num = torch.fft.rfft2(self.num.reshape(-1, 2, self.box, self.box).sum(dim=1).float())
        den = self.den.reshape(-1, 2, self.den.shape[-1]).sum(dim=1).clamp(min=1e-6).float()
        return num / den[:, rings]

    def reference(self, rings: torch.Tensor, mask: torch.Tensor, c: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """Class ``c``'s Wiener-filtered canonical average (real space, masked) and its half-set FRC."""
        average = self.average(rings, mask, c)
        return average.reference, average.frc

    def average(self, rings: torch.Tensor, mask: torch.Tensor, c: int = 0) -> "ClassAverage":
        """Class ``c``'s average with its FRC, the Wiener filter the FRC gives, and its two half-set
        averages filtered like the full one (what they agree on is what the data support)."""
        num2, den2 = self.num[2 * c: 2 * c + 2], self.den[2 * c: 2 * c + 2]
        n_rings = den2.shape[1]
        den = den2.clamp(min=1e-6).float()
        num = torch.fft.rfft2(num2.reshape(2, self.box, self.box)).to(torch.complex64)
        halves = num / den[:, rings]
        frc = fourier_ring_correlation(halves[0], halves[1], rings, n_rings)
        f = frc.clamp(1e-3, 0.999)
        ssnr = 2 * f / (1 - f)  # of the full average: twice the half-set SSNR
        gain = ssnr / (1 + ssnr)
        full = num.sum(dim=0) / den2.sum(dim=0).clamp(min=1e-6).float()[rings]
        ref = torch.fft.irfft2(full * gain[rings], s=mask.shape) * mask
        filtered_halves = torch.fft.irfft2(halves * gain[rings], s=mask.shape) * mask
        return ClassAverage(ref, frc.numpy(), gain, filtered_halves)


def turned_back(images: torch.Tensor, psi: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(b, B, B) particle images in the canonical frame of their poses (ψ rad (b,), shift px (b, 2))."""
    # The particle is rotate(canonical, ψ, s): its origin is −s, which canonicalisation undoes.
    return rotate(images, -psi, canonicalising_shift_px(psi, -shift))


@dataclass
class ClassAverage:
    reference: torch.Tensor  # (B, B) Wiener-filtered, masked
    frc: np.ndarray  # (B//2 + 1,) half-set FRC
    gain: torch.Tensor  # (B//2 + 1,) the Wiener filter applied, per ring
    halves: torch.Tensor  # (2, B, B) the half-set averages, filtered and masked alike


def noise_spectrum(images: Iterable[np.ndarray], n_particles: int, rings: torch.Tensor, n_rings: int,
                   over_processes: bool = True) -> torch.Tensor:
    """(B//2 + 1,) noise power per Fourier ring (rfft2 units) from the particles' mean power: at low SNR
    the power is mostly noise. ``images``: every particle once, in (b, B, B) batches; each process's own
    share, summed over the processes, unless ``over_processes`` is off (one process reads them all)."""
    power = torch.zeros(n_rings, dtype=torch.float64)
    for batch in images:
        power += ring_mean(torch.fft.rfft2(torch.from_numpy(batch)).abs() ** 2, rings, n_rings).sum(0).double()
    if over_processes:
        summed(power)  # each process read its own particles
    # A floor: where the particles hold no power at all (noise-free images of a map coarser than the pixels,
    # or Fourier-padded ones) whitening would otherwise blow rounding errors up into the whole signal.
    noise = (power / n_particles).float()
    return noise.clamp(min=max(float(noise[1:].max()) * 1e-3, 1e-12))
