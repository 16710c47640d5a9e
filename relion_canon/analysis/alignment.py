"""In-plane alignment of particles against a canonical reference that is learnt from them (refinement).

The networks predict an in-plane angle per particle in one pass (amortised), to within tens of degrees at
low SNR. This module refines those angles to a fraction of a degree, cheaply, the way a classifier with
one class would, but without marginalising over a sampled grid:

1. The reference is the CTF-corrected, Wiener-filtered average of the particles turned back by their
   current angles (and shifts). The filter comes from the Fourier ring correlation of two half-set
   averages (SSNR = 2·FRC/(1 − FRC)), so the reference holds only what the data support, and noise
   cannot build up in it.
2. Each particle, multiplied by its own CTF in its own frame (which handles astigmatism exactly) and
   whitened by the noise spectrum, is resampled on a polar grid about its centre; the correlation with
   the reference's polar grid at *every* angle is one FFT along the angle per ring. The peak, refined by
   a parabola through its neighbours, is the new angle. Optionally a translational search (2-D FFT
   cross-correlation with the turned reference) then re-centres the particle.
3. Repeat a few rounds. With many particles the rounds run on a random subset of 5,000, and then two
   passes search every particle: against the subset's reference, then against the reference all of them
   give. Only those passes grow with N; on 20,000 simulated particles the final angles were as accurate
   as with every round on all (psi rMSE 0.709° vs 0.708° at SNR 0.1, 1.014° vs 1.012° at SNR 0.05).

Angles follow RELION's convention (product.md): the particle is its canonical image turned
counter-clockwise by ψ about pixel box//2, so ``geometry.rotate(reference, ψ, shift)`` is the
particle's noise-free, CTF-free image. The frame is the initial angles' frame: starting from a model's
predictions keeps the model's canonical frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from relion_canon.ctf import CtfParams
from relion_canon.geometry import (
    canonicalising_shift_px,
    fourier_ring_correlation,
    periodic_peak,
    polar_grid,
    resolution_at_threshold_A,
    ring_index,
    ring_mean,
    rotate,
    sample_polar,
    shift_peak,
    soft_circular_mask,
    wrap_deg,
    wrap_rad,
)

ImageBatches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
"""Called once per round; yields (indices (b,), images (b, B, B) float32) covering every particle once."""


@dataclass
class AlignmentConfig:
    rounds: int = 10  # at most; see converged_deg
    # Polar grid: angles per ring (1.4° apart), refined below the grid by a parabola; 360 gave the same psi
    # rMSE (0.71°) on the realistic set, 30 % slower.
    angular_samples: int = 256
    mask_radius_fraction: float = 0.9  # rings out to this fraction of box/2
    max_shift: float = 0.0  # px at the working box; 0 = no translational search
    shift_from_round: int = 2  # translations are searched once the reference is sharp
    converged_deg: float = 0.1  # stop early once the angles change by less than this (rms)
    min_rounds: int = 2
    batch_size: int = 512
    cache_bytes: int = 1 << 30  # keep the CTF-weighted particles in memory up to this size
    # Above this many particles, the rounds run on a random subset of this many, then two passes search
    # every particle against the subset's reference and then the reference from all; None: always all.
    reference_particles: int | None = 5000
    seed: int = 0


@dataclass
class Alignment:
    psi: np.ndarray  # (N,) degrees in [−180, 180), RELION's convention, in the initial angles' frame
    shift: np.ndarray  # (N, 2) px (x, y) at the working box: the particle's centre is box//2 + shift
    score: np.ndarray  # (N,) normalised cross-correlation with the CTF-modulated reference, in [−1, 1]
    reference: np.ndarray  # (B, B) the canonical image: CTF-corrected, Wiener-filtered average
    frc: np.ndarray  # (B//2 + 1,) half-set Fourier ring correlation of the last reference
    noise: np.ndarray  # (B//2 + 1,) noise power per Fourier ring (rfft2 units), used for whitening
    history: list[dict[str, float]] = field(default_factory=list)  # per round: psi change, score, resolution


class _Accumulator:
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


def align_particles(
    batches: ImageBatches,
    n_particles: int,
    ctf: CtfParams | None,
    pixel_size: np.ndarray,
    box: int,
    initial_psi_deg: np.ndarray | None = None,
    config: AlignmentConfig = AlignmentConfig(),
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Alignment:
    """Refine every particle's in-plane angle (and optionally shift) against a reference learnt from them.

    ``batches`` yields the preprocessed particles (normalised; any downsampling done) at ``box`` px with
    per-particle ``pixel_size`` (Å, after downsampling) and ``ctf``; without CTF parameters the images are
    compared as they are. ``initial_psi_deg`` (a model's predictions) seeds the first reference; without
    it, random angles do, and more rounds are needed.
    """
    rng = np.random.default_rng(config.seed)
    psi = torch.from_numpy(np.deg2rad(
        initial_psi_deg if initial_psi_deg is not None else rng.uniform(-180, 180, n_particles)
    ).astype(np.float32))
    shift = torch.zeros(n_particles, 2)
    score = torch.zeros(n_particles)
    n_rings = box // 2 + 1
    rings = ring_index(box)
    radius = config.mask_radius_fraction * box / 2
    mask = torch.from_numpy(np.array(soft_circular_mask(box, radius, 3.0)))
    radii, xy = polar_grid(box, radius, config.angular_samples)
    ring_weight = radii[:, None]  # area element ρ dρ dθ of the polar sum
    pixel_size = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (n_particles,))

    # Every round needs the same CTF-weighted images: keep them when they fit, else recompute per round.
    fits = n_particles * box * box * 8 <= config.cache_bytes
    # With many particles the rounds run on a random subset, and then every particle is searched in two
    # passes: rounds cost a fixed amount and only the passes grow with N (accuracy: see the module docstring).
    subset = None
    if config.reference_particles is not None and n_particles > config.reference_particles:
        subset = np.sort(rng.choice(n_particles, config.reference_particles, replace=False))
    in_subset = np.zeros(n_particles, dtype=bool)
    if subset is not None:
        in_subset[subset] = True
    raw: list[tuple[np.ndarray, np.ndarray]] = []  # the particles as read, when they fit, until prepared
    raw_subset: list[tuple[np.ndarray, np.ndarray]] = []  # the subset's, when all do not fit

    # Noise spectrum from the particles' mean power (at low SNR the power is mostly noise): used to whiten.
    power = torch.zeros(n_rings, dtype=torch.float64)
    for idx, images in batches():
        power += ring_mean(torch.fft.rfft2(torch.from_numpy(images)).abs() ** 2, rings, n_rings).sum(0).double()
        if fits:
            raw.append((idx, images))
        elif subset is not None and in_subset[idx].any():
            keep = in_subset[idx]
            raw_subset.append((idx[keep], images[keep]))
    # A floor: where the particles hold no power at all (noise-free images of a map coarser than the pixels,
    # or Fourier-padded ones) whitening would otherwise blow rounding errors up into the whole signal.
    noise = (power / n_particles).float()
    noise = noise.clamp(min=max(float(noise[1:].max()) * 1e-3, 1e-12))

    def prepare(idx: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, CTF-weighted image, whitened CTF-weighted image, ring mean of CTF²) of one batch."""
        spectra = torch.fft.rfft2(torch.from_numpy(images))
        if ctf is not None:
            c = torch.from_numpy(ctf.take(idx).ctf(box, pixel_size[idx], rfft=True).astype(np.float32))
        else:
            c = torch.ones(len(idx), box, box // 2 + 1)
        weighted = spectra * c
        return (idx, torch.fft.irfft2(weighted, s=(box, box)), torch.fft.irfft2(weighted / noise[rings], s=(box, box)),
                ring_mean(c**2, rings, n_rings))

    cache: list | None = [] if fits else None

    def prepared() -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every particle, prepared: from the cache once it is full."""
        if cache:
            yield from cache
            return
        source = _drain(raw) if fits else batches()
        for idx, images in source:
            item = prepare(idx, images)
            if cache is not None:
                cache.append(item)
            yield item

    if subset is None:
        rows: np.ndarray = np.arange(n_particles)
        items: Callable[[], Iterator] = prepared
    else:
        rows = subset
        if fits:  # the subset's images are copied out of the full set's, which stay for the passes
            raw_subset = [(idx[in_subset[idx]], images[in_subset[idx]]) for idx, images in raw]
        subset_items = [prepare(idx, images) for idx, images in raw_subset if len(idx)]
        raw_subset.clear()

        def items() -> Iterator:
            return iter(subset_items)

    acc = _Accumulator(box, n_rings)
    for idx, weighted, _, ctf2 in items():
        t = torch.from_numpy(idx)
        acc.add(idx, weighted, ctf2, psi[t], shift[t])
    reference, frc = acc.reference(rings, mask)
    history: list[dict[str, float]] = []
    step = 2 * math.pi / config.angular_samples

    def search(source: Iterator, reference: torch.Tensor, search_shift: bool) -> _Accumulator:
        """Search every particle of ``source`` against ``reference`` (psi, shift, score updated in place) and
        sum them, turned back by their new angles, into the next reference."""
        ref_polar = sample_polar(reference[None], xy)[0]
        ref_fft = torch.fft.rfft(ref_polar * ring_weight, dim=-1)
        ref_norm = torch.sqrt((ref_polar**2 * ring_weight).sum()).clamp(min=1e-12)
        # Particles are sampled about their own centres only once any has moved off the box centre.
        off_centre = search_shift or bool(shift.any())
        acc = _Accumulator(box, n_rings)
        for idx, weighted, whitened, ctf2 in source:
            t = torch.from_numpy(idx)
            centres = shift[t]
            if search_shift:
                turned = rotate(reference.expand(len(idx), box, box), psi[t])
                cc = torch.fft.irfft2(torch.fft.rfft2(whitened) * torch.fft.rfft2(turned).conj(), s=(box, box))
                centres = shift_peak(cc, config.max_shift)
                shift[t] = centres
            polar = sample_polar(whitened, xy, centres if off_centre else None)
            # Summed over rings before the inverse FFT (it is linear): one inverse transform per particle.
            corr = torch.fft.irfft((torch.fft.rfft(polar, dim=-1).conj() * ref_fft).sum(1), n=config.angular_samples,
                                   dim=-1)
            pos, height = periodic_peak(corr)
            psi[t] = pos * step
            norm = torch.sqrt((polar**2 * ring_weight).sum(dim=(1, 2))).clamp(min=1e-12)
            score[t] = height / (norm * ref_norm)
            acc.add(idx, weighted, ctf2, psi[t], shift[t])
        return acc

    def record(name: str, number: int, total: int, changed: np.ndarray, scored: np.ndarray, frc: np.ndarray) -> float:
        t = torch.from_numpy(changed)
        change = torch.rad2deg(wrap_rad(psi[t] - old_psi[t]))
        rms = float(torch.sqrt((change**2).mean()))
        resolution = resolution_at_threshold_A(frc, float(np.median(pixel_size)), box)
        history.append({"round": len(history) + 1, "psi_change_rms_deg": rms,
                        "mean_score": float(score[torch.from_numpy(scored)].mean()), "resolution_A": resolution})
        if log is not None:
            log(f"alignment {name} {number}/{total}: psi changed by {rms:.2f}° rms, mean correlation "
                f"{history[-1]['mean_score']:.3f}, reference resolution {resolution:.1f} Å (FRC 0.143)")
        return rms

    name = "round" if subset is None else f"round (reference from {len(rows)} of {n_particles} particles)"
    for round_ in range(config.rounds):
        if should_stop is not None and should_stop():
            raise InterruptedError("alignment stopped on request")
        old_psi = psi.clone()
        search_shift = config.max_shift > 0 and round_ >= config.shift_from_round
        acc = search(items(), reference, search_shift)
        reference, frc = acc.reference(rings, mask)
        if record(name, round_ + 1, config.rounds, rows, rows, frc) < config.converged_deg \
                and round_ + 1 >= config.min_rounds:
            break
    if subset is not None:
        subset_items.clear()  # the passes read (or cache) every particle anew
        everyone = np.arange(n_particles)
        for pass_ in range(2):
            if should_stop is not None and should_stop():
                raise InterruptedError("alignment stopped on request")
            old_psi = psi.clone()
            acc = search(prepared(), reference, config.max_shift > 0)
            reference, frc = acc.reference(rings, mask)
            record("pass over all particles", pass_ + 1, 2, subset if pass_ == 0 else everyone, everyone, frc)
    psi_deg = wrap_deg(np.rad2deg(psi.numpy().astype(np.float64)))
    return Alignment(psi_deg, shift.numpy().astype(np.float64), score.numpy().astype(np.float64),
                     reference.numpy(), frc, noise.numpy(), history)


def _drain(items: list) -> Iterator:
    """Yield and drop the items of a list front to back, so that each can be freed once it is used."""
    items.reverse()
    while items:
        yield items.pop()

