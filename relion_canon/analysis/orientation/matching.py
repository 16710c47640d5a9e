"""Projection matching of class averages against a 3-D reference: each class's orientation (rot, tilt and the
in-plane offset that turns the projection into the class average), with a confidence.

For one class average C (CTF-corrected, Wiener-filtered, masked, in its own frame):

1. Projections P(rot, tilt, 0) of the reference along a grid of directions over the point group's asymmetric
   unit (the whole sphere for C1: that covers mirrors, see :func:`~.directions.sphere_grid`), ~7.5° apart.
2. Every in-plane turn of each projection at once, by the polar correlation the particle alignment uses
   (:mod:`relion_canon.analysis.alignment`: the polar grid, one FFT along the angle per ring, a parabolic
   peak): C ≈ rotate(P, α), the same convention as a particle ψ against its class average. Both images are
   band-limited to the class's resolution first, so the score is a normalised cross-correlation of what the
   class average actually holds.
3. The best few distinct directions are refined locally on finer patches (2.5°, then 0.8°); the best is the
   match, the best of the others its rival. A class whose match beats its rival by less than
   :data:`AMBIGUOUS_MARGIN` is flagged instead of guessed (views alike along a symmetry axis, or a blob).
4. The class average's centre against the projection's (a 2-D cross-correlation), the last patch searched
   again about it, and the Fourier ring correlation of the class average with the matched projection.

Since projections turn like particles, P(rot, tilt, α) = rotate(P(rot, tilt, 0), α), so a particle at ψ in
the class's frame is the projection at (rot, tilt, α + ψ) (:mod:`.priors`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relion_canon.analysis.alignment import AlignmentConfig, SearchGrid
from relion_canon.analysis.orientation.directions import patch, sphere_grid
from relion_canon.analysis.orientation.point_group import direction_distance_deg, group_matrices, rot_tilt
from relion_canon.geometry import (
    fourier_ring_correlation,
    periodic_peak,
    resolution_at_threshold_A,
    ring_mean,
    sample_polar,
    shift_peak,
    wrap_deg,
)
from relion_canon.geometry.projection import FourierProjector

log = logging.getLogger(__name__)

# A match must beat the best distinct direction by this much normalised correlation to be trusted. On the
# simulated 8-view ribosome set at SNR 0.05 (tests/analysis/test_orientation.py) right matches beat their rivals
# by 0.17-0.32; the two symmetry mates of a C2 map's side view searched as C1 differ by under 0.01.
AMBIGUOUS_MARGIN = 0.02
# Below this normalised correlation the class does not look like any one projection: junk that passed as a view,
# or several views averaged (a blurred, round class: 0.70 on the 8-view ribosome set at 32 px when the classes
# merged into one). Classes of one view score 0.84-0.96 there (tests/analysis/test_orientation.py).
MIN_PEAK = 0.75
# Rings whose mean power in the reference's projections is below this fraction of the strongest ring's hold
# no signal of the reference (beyond a low-pass filter's cut-off, or the map's own resolution).
REFERENCE_BAND = 1e-2
# The coarse search compares rings up to this fraction of the box (a quarter: 8 px wavelengths and longer).
COARSE_BAND = 0.25


@dataclass(frozen=True)
class MatchConfig:
    coarse_step_deg: float = 7.5
    fine_steps_deg: tuple[float, ...] = (2.5, 0.8)
    candidates: int = 4  # distinct coarse peaks refined, so that the rival is refined as well as the match
    distinct_deg: float = 20.0  # two directions closer than this are one peak
    # The class average's centre against the projection's, at the working box. A class average is centred where
    # its particles' offsets average out (the alignment's offset prior is centred), so near the map's centre.
    max_shift_px: float = 2.0
    centre_step_px: float = 0.5  # the coarse search's grid of centres
    ambiguous_margin: float = AMBIGUOUS_MARGIN
    min_peak: float = MIN_PEAK
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)  # polar grid and mask


@dataclass
class ClassMatch:
    """One class's orientation: the class average ≈ the projection at (rot, tilt, psi), moved by ``shift_px``."""

    rot_deg: float
    tilt_deg: float
    psi_deg: float  # α: the class average is the projection at (rot, tilt, 0) turned by α
    shift_px: tuple[float, float]  # (x, y): the projection's centre sits at box//2 + shift in the class average
    peak: float  # normalised correlation at the match
    rival: float  # the best distinct direction's
    rival_rot_deg: float
    rival_tilt_deg: float
    frc: np.ndarray  # (box//2 + 1,) class average vs the matched projection
    frc_resolution_A: float  # where that FRC falls below 0.5
    ambiguous: bool
    reason: str  # why it is ambiguous ("" when it is not)

    @property
    def margin(self) -> float:
        return self.peak - self.rival

    def report(self) -> dict[str, Any]:
        return {"rot_deg": self.rot_deg, "tilt_deg": self.tilt_deg, "psi_offset_deg": self.psi_deg,
                "shift_px": list(self.shift_px), "peak": self.peak, "margin": self.margin,
                "rival": {"rot_deg": self.rival_rot_deg, "tilt_deg": self.rival_tilt_deg, "score": self.rival},
                "frc_resolution_A": self.frc_resolution_A, "ambiguous": self.ambiguous,
                **({"reason": self.reason} if self.reason else {})}


def band_limit(images: torch.Tensor, lowpass_ring: float, grid: SearchGrid, whiten: torch.Tensor) -> torch.Tensor:
    """(b, B, B) images without their mean, each Fourier ring scaled by ``whiten`` (n_rings,), low-passed by a
    raised cosine ending at ``lowpass_ring`` (cycles per box), masked as references are."""
    f = torch.fft.rfft2(images)
    k = torch.sqrt(torch.fft.fftfreq(grid.box)[:, None] ** 2 + torch.fft.rfftfreq(grid.box)[None, :] ** 2) * grid.box
    width = 2.0
    ramp = 0.5 + 0.5 * torch.cos(math.pi * ((k - (lowpass_ring - width)) / width).clamp(0.0, 1.0))
    ramp[0, 0] = 0.0
    return torch.fft.irfft2(f * (ramp * whiten[grid.rings]), s=(grid.box, grid.box)) * grid.mask


class Matcher:
    """Matches class averages against one reference at one box: projections are made on demand and shared by
    every class (the coarse grid is projected once)."""

    def __init__(self, volume: np.ndarray, pixel_size_A: float, symmetry: str = "C1",
                 config: MatchConfig = MatchConfig()):
        self.projector = FourierProjector(volume)
        self.box = self.projector.box
        self.pixel_size_A = float(pixel_size_A)
        self.group = group_matrices(symmetry)
        self.config = config
        self.grid = SearchGrid.build(self.box, config.alignment)
        self.coarse = sphere_grid(config.coarse_step_deg, self.group)
        self._coarse_images = self._project(self.coarse)
        # One fixed filter for class averages and projections alike: every ring of the reference's projections
        # at equal power. Unweighted, the lowest rings (the overall shape, alike from many directions) decide
        # and the details that tell directions apart hardly count. Only the rings where the reference holds
        # signal are compared: flattening a low-passed map beyond its cut-off would amplify nothing into noise.
        power = ring_mean(torch.fft.rfft2(self._coarse_images).abs() ** 2, self.grid.rings, self.grid.n_rings).mean(0)
        held = np.flatnonzero((power[1:] >= REFERENCE_BAND * power[1:].max()).numpy()) + 1
        self.reference_ring = int(held.max()) if held.size else self.box // 2
        self._whiten = 1.0 / torch.sqrt(power.clamp(min=float(power[1:].max()) * REFERENCE_BAND))

    def _project(self, directions: np.ndarray, psi_deg: float | np.ndarray = 0.0,
                 shifts_px: np.ndarray | None = None) -> torch.Tensor:
        rot, tilt = rot_tilt(directions)
        return torch.from_numpy(self.projector.project(rot, tilt, psi_deg, shifts_px)).float()

    def _polar(self, images: torch.Tensor, lowpass_ring: float,
               centre_px: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, rings, angles//2+1) ring-weighted angular spectra and (b,) norms of band-limited images."""
        polar = sample_polar(band_limit(images, lowpass_ring, self.grid, self._whiten), self.grid.xy, centre_px)
        norm = torch.sqrt((polar**2 * self.grid.ring_weight).sum(dim=(1, 2))).clamp(min=1e-12)
        return torch.fft.rfft(polar * self.grid.ring_weight, dim=-1), norm

    def _scores(self, average: torch.Tensor, lowpass_ring: float, projections: torch.Tensor,
                centres_px: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each projection, the best of the class average's ``centres_px`` (c, 2) (x, y), the in-plane angle α
        (degrees) and normalised correlation there: the class average ≈ rotate(projection, α), its centre moved
        by the centre. Returns (centre index (n,), α (n,), score (n,))."""
        a = band_limit(average[None], lowpass_ring, self.grid, self._whiten).expand(len(centres_px), self.box, self.box)
        a_polar = sample_polar(a, self.grid.xy, centres_px)
        a_norm = torch.sqrt((a_polar**2 * self.grid.ring_weight).sum(dim=(1, 2))).clamp(min=1e-12)
        a_fft = torch.fft.rfft(a_polar, dim=-1)
        p_fft, p_norm = self._polar(projections, lowpass_ring)
        best = torch.full((len(projections),), -np.inf)
        best_pos, best_c = torch.zeros(len(projections)), torch.zeros(len(projections), dtype=torch.long)
        for c in range(len(centres_px)):
            corr = torch.fft.irfft((a_fft[c].conj()[None] * p_fft).sum(1), n=self.grid.angular_samples, dim=-1)
            pos, height = periodic_peak(corr)
            score = height / (a_norm[c] * p_norm)
            better = score > best
            best = torch.where(better, score, best)
            best_pos = torch.where(better, pos, best_pos)
            best_c = torch.where(better, torch.full_like(best_c, c), best_c)
        alpha = wrap_deg(np.rad2deg((best_pos * self.grid.step_rad).numpy().astype(np.float64)))
        return best_c.numpy(), alpha, best.numpy().astype(np.float64)

    def match(self, average: np.ndarray, resolution_A: float | None = None) -> ClassMatch:
        """The orientation of one class average (B, B); ``resolution_A`` (its FRC 0.143 resolution) bounds the
        band compared."""
        cfg = self.config
        avg = torch.from_numpy(np.asarray(average, dtype=np.float32))
        ring = self.box / 2 - 1 if not resolution_A else self.box * self.pixel_size_A / resolution_A
        ring = float(np.clip(min(ring, self.reference_ring + 1.0), 4.0, self.box / 2 - 1))
        # The coarse search tries centres on a grid only; below this band its error costs little.
        coarse_ring = min(ring, max(4.0, COARSE_BAND * self.box))
        centres = self._centres
        which, alpha, score = self._scores(avg, coarse_ring, self._coarse_images, centres)
        peaks = self._distinct_peaks(self.coarse, score, cfg.candidates)
        refined = [self._refine(avg, ring, self.coarse[i], float(alpha[i]), cfg.coarse_step_deg, cfg.fine_steps_deg[:1])
                   for i in peaks]
        order = np.argsort([-r[2] for r in refined])
        best, rest = refined[order[0]], [refined[i] for i in order[1:]]
        direction, alpha0, peak, shift = self._refine(avg, ring, best[0], best[1], cfg.fine_steps_deg[0],
                                                      cfg.fine_steps_deg[1:] + cfg.fine_steps_deg[-1:] * 2)
        rivals = [r for r in rest if direction_distance_deg(direction, r[0], self.group) >= cfg.distinct_deg]
        if rivals:
            rival_dir, rival = rivals[0][0], rivals[0][2]
        else:  # every coarse peak collapsed onto the match: the rival is the best coarse direction away from it
            far = direction_distance_deg(self.coarse, direction, self.group) >= cfg.distinct_deg
            j = int(np.flatnonzero(far)[np.argmax(score[far])]) if far.any() else int(np.argmin(score))
            rival_dir, rival = self.coarse[j], float(score[j])
        rot, tilt = rot_tilt(direction)
        rival_rot, rival_tilt = rot_tilt(rival_dir)
        frc = self._frc(avg, float(rot), float(tilt), alpha0, shift)
        reason = ""
        if peak < cfg.min_peak:
            reason = f"correlation {peak:.2f} < {cfg.min_peak}: no projection looks like it"
        elif peak - rival < cfg.ambiguous_margin:
            reason = (f"the direction (rot {float(rival_rot):.0f}°, tilt {float(rival_tilt):.0f}°) matches almost as "
                      f"well ({rival:.3f} vs {peak:.3f})")
        return ClassMatch(float(rot), float(tilt), float(alpha0), shift, float(peak),
                          float(rival), float(rival_rot), float(rival_tilt), frc,
                          resolution_at_threshold_A(frc, self.pixel_size_A, self.box, 0.5), bool(reason), reason)

    @property
    def _centres(self) -> torch.Tensor:
        """(c, 2) centres on a ``centre_step_px`` grid within ``max_shift_px`` of box//2 that the coarse search
        tries: a class average need not be centred on the map's centre, and at 32-64 px a pixel off spoils the
        match."""
        step = self.config.centre_step_px
        m = int(np.floor(self.config.max_shift_px / step))
        x, y = np.meshgrid(np.arange(-m, m + 1) * step, np.arange(-m, m + 1) * step, indexing="xy")
        keep = x**2 + y**2 <= self.config.max_shift_px**2
        return torch.from_numpy(np.stack([x[keep], y[keep]], axis=-1).astype(np.float32))

    def _distinct_peaks(self, directions: np.ndarray, score: np.ndarray, n: int) -> list[int]:
        """Indices of the ``n`` best directions at least ``distinct_deg`` from each better one."""
        chosen: list[int] = []
        for i in np.argsort(-score):
            if all(direction_distance_deg(directions[i], directions[j], self.group) >= self.config.distinct_deg
                   for j in chosen):
                chosen.append(int(i))
                if len(chosen) == n:
                    break
        return chosen

    def _refine(self, avg: torch.Tensor, ring: float, start: np.ndarray, alpha_deg: float, previous_step: float,
                steps: tuple[float, ...]) -> tuple[np.ndarray, float, float, tuple[float, float]]:
        """Local search about ``start`` (its in-plane angle ``alpha_deg``), from the class average's centre
        against it (sub-pixel): per step, a patch 1.5 previous steps wide about the best so far, with centres
        nudged about the best one. (direction, α, score, centre (x, y) px) of the best."""
        best, best_alpha, best_score = np.asarray(start, dtype=np.float64), alpha_deg, -np.inf
        centre = torch.tensor([self._centre(avg, ring, best, best_alpha)])
        for step in steps:
            # Direction and centre are coupled at this size (a slightly other view, slightly moved, looks alike):
            # search them together, the centres a quarter pixel about the current one.
            centres = centre + self._nudges
            points = patch(best, step, 1.5 * previous_step)
            which, alpha, score = self._scores(avg, ring, self._project(points), centres)
            k = int(np.argmax(score))
            if score[k] > best_score:
                best, best_alpha, best_score = points[k], float(alpha[k]), float(score[k])
                centre = centres[which[k]][None]
            previous_step = step
        return best, best_alpha, best_score, (float(centre[0, 0]), float(centre[0, 1]))

    _nudges = torch.tensor([[dx, dy] for dy in (-0.25, 0.0, 0.25) for dx in (-0.25, 0.0, 0.25)])

    def _centre(self, avg: torch.Tensor, ring: float, direction: np.ndarray, alpha_deg: float) -> tuple[float, float]:
        """(x, y) px where the matched projection's centre sits in the class average (its peak of
        cross-correlation, within ``max_shift_px``)."""
        turned = band_limit(self._project(direction[None], alpha_deg), ring, self.grid, self._whiten)
        a = band_limit(avg[None], ring, self.grid, self._whiten)
        cc = torch.fft.irfft2(torch.fft.rfft2(a) * torch.fft.rfft2(turned).conj(), s=(self.box, self.box))
        shift = shift_peak(cc, self.config.max_shift_px)[0]
        return float(shift[0]), float(shift[1])

    def _frc(self, avg: torch.Tensor, rot: float, tilt: float, alpha: float, shift: tuple[float, float]) -> np.ndarray:
        matched = torch.from_numpy(self.projector.project(rot, tilt, alpha, np.array([shift]))).float()[0]
        return fourier_ring_correlation(torch.fft.rfft2(avg * self.grid.mask), torch.fft.rfft2(matched * self.grid.mask),
                                        self.grid.rings, self.grid.n_rings).numpy()

    def projection(self, match: ClassMatch) -> np.ndarray:
        """(B, B) the matched projection as the class average shows it (for the figure)."""
        return self.projector.project(match.rot_deg, match.tilt_deg, match.psi_deg, np.array([match.shift_px]))[0]
