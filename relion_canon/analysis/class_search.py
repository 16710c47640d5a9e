"""One round's search of a multi-reference 2-D classification: every particle against every class reference,
at every turn about its centre (polar correlation) and, for its likeliest classes, at every shift (under the
offset prior of :class:`~relion_canon.analysis.alignment.ShiftSearch`); the class whose reference explains it
best wins (the Gaussian log-likelihood ⟨x, CR⟩/σ² − ½‖CR‖²/σ², with the particle's CTF C and noise σ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from relion_canon.analysis.alignment import Poses, SearchGrid, ShiftSearch
from relion_canon.analysis.alignment_reference import ClassAverage, HalfSetSums
from relion_canon.analysis.prepared_particles import Prepared, only
from relion_canon.geometry import (parabolic_height, parabolic_offset, periodic_peak, ring_mean, rotate, sample_polar,
                                   window_half_width, wrap_rad)
from relion_canon.parallel import merged, summed

# Classes per particle whose reference a translational search tries, the likeliest at the particle's centre.
SHIFT_CANDIDATES = 10
# The translational search lays each reference at the nearest of this many turns (2.8° apart: under a
# pixel at the edge of a 64 px box) instead of turning it anew for every particle.
SHIFT_TURNS = 128
SHIFT_IMAGES = 4096  # cross-correlations computed at once
# A global search (:meth:`ClassSearch.search_globally`) tries every 4th of those turns (11.25° apart; the
# search that follows refines the turn).
GLOBAL_TURN_STRIDE = 4
GLOBAL_TURN_RAD = GLOBAL_TURN_STRIDE * 2 * math.pi / SHIFT_TURNS
GLOBAL_BYTES = 64 * 2**20  # the largest intermediate of a global search's product
# A turn half a coarse step off moves the samples of ring r by r·(half a step, rad) of a ring's spacing. Rings
# beyond a displacement of one spacing add noise, not evidence, to a coarse step's score: the global search
# holds only the rings within it (ring 10 at 11.25°), which also makes it far cheaper.
GLOBAL_RINGS = int(SHIFT_TURNS / (GLOBAL_TURN_STRIDE * math.pi))
# The band the references hold: out to the last ring where the classes' Wiener filters pass more than this
# on average (beyond it their half-sets agree about as much as noise does).
SUPPORTED_GAIN = 0.1


@dataclass
class ClassState:
    """Where a classification stands: every particle's pose and class, and the class sums they give."""

    poses: Poses
    classes: torch.Tensor  # (N,) index into the live references
    sums: HalfSetSums
    # (K, K) [a, b]: the mean over class a's particles of their log-likelihood under a less that under b
    # (each at its best turn), from the search that made this state; None before the first search.
    margins: torch.Tensor | None = None
    # (N,) each particle's log-likelihood at its class and pose (offset prior included), from the search that
    # made this state; None before the first search.
    loglik: torch.Tensor | None = None


@dataclass
class _References:
    """What a search needs of the class references: their polar spectra, polar norms and power per ring."""

    # (angles//2 + 1, rings, K): one (rings, K) matrix per angular frequency, as the batched product takes it
    fft: torch.Tensor
    norm: torch.Tensor  # (K,)
    power: torch.Tensor  # (K, rings) float64


def better_of(states: list[ClassState], batches: Iterable[Prepared], grid: SearchGrid) -> ClassState:
    """Per particle, the class and pose of whichever of several searches' states (against the same references)
    explains it best (the first on a tie), with the class sums they give."""
    first = states[0]
    poses, classes, loglik = first.poses, first.classes, first.loglik
    for other in states[1:]:
        take = other.loglik > loglik
        poses = other.poses.where(take, poses)
        classes = torch.where(take, other.classes, classes)
        loglik = torch.where(take, other.loglik, loglik)
    return ClassState(poses, classes, sums_of(batches, poses, classes, first.sums.n_classes, grid), first.margins,
                      loglik)


def sums_of(batches: Iterable[Prepared], poses: Poses, classes: torch.Tensor, k: int, grid: SearchGrid) -> HalfSetSums:
    sums = HalfSetSums(grid.box, grid.n_rings, k)
    for idx, weighted, _, ctf2 in batches:
        t = torch.from_numpy(idx)
        sums.add(idx, weighted, ctf2, poses.psi_rad[t], poses.shift_px[t], classes[t])
    return sums.summed_over_processes()


def averages_of(sums: HalfSetSums, grid: SearchGrid) -> list[ClassAverage]:
    """Every class's average (reference, FRC, Wiener filter, half-sets) from its half-set sums."""
    return [sums.average(grid.rings, grid.mask, c) for c in range(sums.n_classes)]


def _turned_spectra(references: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """(K, SHIFT_TURNS // stride, B, B//2 + 1) rfft2 of every reference turned by every ``stride``-th multiple
    of 2π/SHIFT_TURNS."""
    k, box = references.shape[0], references.shape[-1]
    turns = torch.arange(0, SHIFT_TURNS, stride) * (2 * math.pi / SHIFT_TURNS)
    turned = rotate(references.repeat_interleave(len(turns), dim=0), turns.repeat(k))
    return torch.fft.rfft2(turned).reshape(k, len(turns), box, box // 2 + 1)


def _cropped(spectra: torch.Tensor, size: int) -> torch.Tensor:
    """rfft2 spectra (..., B, B//2 + 1) cut to the frequencies of an even ``size`` box (..., size, size//2 + 1)."""
    half = size // 2
    if size >= spectra.shape[-2]:
        return spectra
    return torch.cat([spectra[..., :half, : half + 1], spectra[..., -half:, : half + 1]], dim=-2)


def _coarse_turns(references: torch.Tensor, band: int) -> torch.Tensor:
    """(K, coarse turns, s, s//2 + 1): the references at every :data:`GLOBAL_TURN_STRIDE`-th turn, on the rings
    a coarse turn can use (:data:`GLOBAL_RINGS`, within ``band``)."""
    box = references.shape[-1]
    return _cropped(_turned_spectra(references, GLOBAL_TURN_STRIDE), min(box, 2 * (min(band, GLOBAL_RINGS) + 1)))


def _particles_per_product(shifts: ShiftSearch, size: int, box: int, references: int) -> int:
    """Particles whose correlation windows against ``references`` spectra of a ``size`` box fit GLOBAL_BYTES
    at once (the windows' intermediate grows with particles × references)."""
    window = 2 * window_half_width(shifts.max_px * size / box) + 1
    return max(1, GLOBAL_BYTES // (8 * window * references * (size // 2 + 1)))


def _polar_norm(polar: torch.Tensor, grid: SearchGrid) -> torch.Tensor:
    """(b,) the norm of polar images (b, rings, angles), each sample weighed by the area it stands for."""
    return torch.sqrt((polar**2 * grid.ring_weight).sum(dim=(1, 2))).clamp(min=1e-12)


def supported_band(averages: list[ClassAverage]) -> int:
    """The rings the class averages hold signal in (see :data:`SUPPORTED_GAIN`)."""
    supported = torch.stack([a.gain for a in averages]).mean(dim=0) > SUPPORTED_GAIN
    return int(torch.nonzero(supported).max()) + 1 if bool(supported.any()) else len(averages[0].gain) - 1


class ClassSearch:
    """The search of one classification's rounds, over particles whitened by ``noise`` (per ring)."""

    def __init__(self, grid: SearchGrid, noise: torch.Tensor):
        self.grid, self.noise = grid, noise
        full = torch.fft.fftfreq(grid.box) * grid.box
        # The ring of every coefficient of the full (fft2) grid.
        self.radius = torch.sqrt(full[:, None] ** 2 + full[None, :] ** 2).round().long().clamp(max=grid.box // 2)
        # Coefficients per ring on the full FFT grid, for the norm ‖CR‖²/σ² from ring means.
        self.ring_counts = torch.bincount(self.radius.flatten(), minlength=grid.n_rings).double()
        self.mean_ctf2 = torch.ones(grid.n_rings, dtype=torch.float64)  # over the particles of the last search

    def likelihood_weight(self) -> torch.Tensor:
        """(B, B) mean CTF² (over the last search's particles) over noise power per Fourier coefficient (fft2
        layout)."""
        return (self.mean_ctf2 / self.noise.double())[self.radius]

    def _references(self, references: torch.Tensor) -> "_References":
        grid = self.grid
        ref_polar = sample_polar(references, grid.xy)
        return _References(
            fft=torch.fft.rfft(ref_polar * grid.ring_weight, dim=-1).permute(2, 1, 0).contiguous(),
            norm=_polar_norm(ref_polar, grid),
            power=self._power(references))

    def _power(self, references: torch.Tensor) -> torch.Tensor:
        """(K, rings) float64: each reference's power per ring, for the norm term (:meth:`_penalty`)."""
        return ring_mean(torch.fft.rfft2(references).abs() ** 2, self.grid.rings, self.grid.n_rings).double()

    def _penalty(self, ctf2: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
        """(b, K) the norm term ½‖CR‖²/σ² of every particle (its CTF² per ring, ``ctf2``) against every
        reference (its ``power`` per ring)."""
        norm_weights = self.ring_counts / self.noise.double() / (self.grid.box**2)
        return 0.5 * (ctf2.double() * norm_weights) @ power.T

    def _polar(self, whitened: torch.Tensor, ctf2: torch.Tensor, shift_px: torch.Tensor | None,
               refs: "_References") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each particle's best turn (samples) about its centre for every class, the correlation there, the
        log-likelihood, the norm term ½‖CR‖²/σ² (all (b, K)) and the particle's polar norm (b,)."""
        grid = self.grid
        polar = sample_polar(whitened, grid.xy, shift_px)
        # Per angular frequency, (b, rings) @ (rings, K): a batched product on contiguous operands, faster on
        # the CPU than the einsum's own layout (benchmarks/classify/README.md, "Speed on 2 cores").
        spectra = torch.fft.rfft(polar, dim=-1).conj().permute(2, 0, 1).contiguous()
        products = torch.bmm(spectra, refs.fft).permute(1, 2, 0).contiguous()  # (b, K, angles//2 + 1)
        corr = torch.fft.irfft(products, n=grid.angular_samples, dim=-1)
        b, k = len(whitened), len(refs.norm)
        pos, height = periodic_peak(corr.reshape(-1, grid.angular_samples))
        pos, height = pos.reshape(b, k), height.reshape(b, k)
        # ⟨x, CR⟩/σ² from the polar sum (its samples stand for ρ dρ dθ of area), less ½‖CR‖²/σ².
        penalty = self._penalty(ctf2, refs.power)
        loglik = height.double() * (2 * math.pi / grid.angular_samples) - penalty
        norm = _polar_norm(polar, grid)
        return pos, height, loglik, penalty, norm

    def search(self, batches: Iterable[Prepared], state: ClassState, references: torch.Tensor, reassign: bool,
                shifts: ShiftSearch | None, band: int) -> ClassState:
        """Every particle against every reference: the best turn about its current centre (polar
        correlation), then, for the likeliest classes there, the best shift at that turn; the class whose
        reference explains the particle best at its own turn and shift wins."""
        grid, k = self.grid, len(references)
        refs = self._references(references)
        search_shift = shifts is not None and shifts.max_px > 0
        off_centre = search_shift or bool(state.poses.shift_px.any())
        poses, classes = state.poses.copy(), state.classes.clone()
        sums = HalfSetSums(grid.box, grid.n_rings, k)
        turned = None
        if search_shift:
            full = _turned_spectra(references)
            turned = (full, _cropped(full, min(grid.box, 2 * (band + 1))))
        ctf2_sum, n_seen = torch.zeros(grid.n_rings, dtype=torch.float64), 0
        margin_sum, members = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        touched = torch.zeros(len(classes), dtype=torch.bool)
        best = torch.zeros(len(classes), dtype=torch.float64)
        for idx, weighted, whitened, ctf2 in batches:
            t = torch.from_numpy(idx)
            touched[t] = True
            ctf2_sum += ctf2.double().sum(0)
            n_seen += len(idx)
            pos, height, loglik, penalty, norm = self._polar(whitened, ctf2, poses.shift_px[t] if off_centre else None,
                                                             refs)
            rows = torch.arange(len(idx))
            chosen = loglik.argmax(dim=1) if reassign else state.classes[t]
            best[t] = loglik[rows, chosen]
            if search_shift:
                chosen, poses.shift_px[t], best[t] = self._shifted(whitened, turned, pos * grid.step_rad, loglik,
                                                                   penalty, chosen if not reassign else None, shifts)
            classes[t] = chosen
            margin_sum.index_add_(0, chosen, loglik[rows, chosen][:, None] - loglik)
            members += torch.bincount(chosen, minlength=k).double()
            poses.psi_rad[t] = pos[rows, chosen] * grid.step_rad
            poses.score[t] = height[rows, chosen] / (norm * refs.norm[chosen])
            sums.add(idx, weighted, ctf2, poses.psi_rad[t], poses.shift_px[t], chosen)
        # Each process searched its own particles: their sums and poses are joined (relion_canon.parallel).
        n_seen = int(summed(torch.tensor([n_seen], dtype=torch.int64)))
        self.mean_ctf2 = summed(ctf2_sum) / max(n_seen, 1)
        summed(margin_sum)
        summed(members)
        return ClassState(poses.merged(state.poses, touched), merged(classes, state.classes, touched),
                          sums.summed_over_processes(), margin_sum / members.clamp(min=1)[:, None],
                          merged(best, torch.full_like(best, -math.inf), touched))

    def search_globally(self, batches: Iterable[Prepared], poses: Poses, references: torch.Tensor,
                        shifts: ShiftSearch, band: int, which: torch.Tensor) -> tuple[Poses, torch.Tensor]:
        """New poses for the particles ``which`` ((N,) bool), and the index of the reference each was found
        against (0 for the others): the best of every coarse turn
        (:data:`GLOBAL_TURN_STRIDE`) and every shift against every class, on the rings a coarse turn can
        use (:data:`GLOBAL_RINGS`). :meth:`search` takes a particle's turn from the polar correlation about
        its current centre, which is wrong when that centre is a few pixels off, and the shift found at a
        wrong turn does not correct it: such a particle stays unexplained by its own view. This search does
        not depend on the centre; the next :meth:`search` refines the turn about the centre it finds."""
        grid, k = self.grid, len(references)
        power = self._power(references)
        cropped = _coarse_turns(references, band)
        size, n_turns = cropped.shape[-2], cropped.shape[1]
        turn_rad = torch.arange(n_turns) * GLOBAL_TURN_RAD
        before, poses = poses, poses.copy()
        every_turn = cropped.flatten(0, 1)  # (K·turns, size, size//2 + 1), in the order of the classes
        step = _particles_per_product(shifts, size, grid.box, len(every_turn))  # against every class and turn
        touched = torch.zeros(len(poses.psi_rad), dtype=torch.bool)
        best_class = torch.zeros(len(poses.psi_rad), dtype=torch.long)
        for idx, _, whitened, ctf2 in only(batches, which):
            t = torch.from_numpy(idx)
            touched[t] = True
            penalty = self._penalty(ctf2, power)  # (b, K)
            small = _cropped(torch.fft.rfft2(whitened), size)
            for start in range(0, len(t), step):
                p = slice(start, start + step)
                shift, height = shifts.peaks_against(small[p], every_turn, grid.box)
                score = height.reshape(-1, k, n_turns).double() - penalty[p][..., None]
                best = score.flatten(1).argmax(dim=1)
                rows = torch.arange(len(best))
                poses.shift_px[t[p]] = shift.reshape(-1, k, n_turns, 2)[rows, best // n_turns, best % n_turns]
                poses.psi_rad[t[p]] = turn_rad[best % n_turns]
                best_class[t[p]] = best // n_turns
        return poses.merged(before, touched), merged(best_class, torch.zeros_like(best_class), touched)

    def centred(self, batches: Iterable[Prepared], state: ClassState, shifts: ShiftSearch,
                among: torch.Tensor | None = None) -> ClassState:
        """``state`` with every particle ``batches`` yields at the centre (and coarse turn) that
        :meth:`search_globally` finds against the classes ``among`` ((K,) bool; default every class), for the
        next :meth:`search` to refine. A particle whose global pose agrees with its current one (within a
        coarse turn and a pixel) keeps the current one, which is finer than the global search's grid."""
        averages = averages_of(state.sums, self.grid)
        used = torch.arange(len(averages)) if among is None else torch.nonzero(among).flatten()
        averages = [averages[c] for c in used.tolist()]
        everyone = torch.ones(len(state.classes), dtype=torch.bool)
        found, best = self.search_globally(batches, state.poses, torch.stack([a.reference for a in averages]),
                                           shifts, supported_band(averages), everyone)
        # The pose found is in its best class's frame, about that class average's centre: the particle goes
        # with it, for the next search to place anew.
        classes, before = used[best], state.poses
        same = ((classes == state.classes)
                & (wrap_rad(found.psi_rad - before.psi_rad).abs() <= GLOBAL_TURN_RAD)
                & ((found.shift_px - before.shift_px).norm(dim=1) <= 1.0))
        return ClassState(before.where(same, found), classes, state.sums, state.margins)

    def scored_in_place(self, batches: Iterable[Prepared], state: ClassState) -> Poses:
        """``state``'s poses with the score of every particle ``batches`` yields taken at its own turn about its
        own centre, against its class's reference. :meth:`search` scores a particle about the centre it
        starts from, before its shift search: after a pass from a coarse or a turned-away centre that is not
        where the particle ends up, and a good particle back at its old pose would keep a junk-like score."""
        grid = self.grid
        refs = self._references(torch.stack([a.reference for a in averages_of(state.sums, grid)]))
        per_class = refs.fft.permute(2, 1, 0)  # (K, rings, angles//2 + 1)
        poses = state.poses.copy()
        for idx, _, whitened, _ in batches:
            t = torch.from_numpy(idx)
            c = state.classes[t]
            polar = sample_polar(whitened, grid.xy, poses.shift_px[t])
            products = (torch.fft.rfft(polar, dim=-1).conj() * per_class[c]).sum(dim=1)
            corr = torch.fft.irfft(products, n=grid.angular_samples, dim=-1)  # (b, angles): at every turn
            # The peak of the correlation within a sample of the particle's turn (the pose's turn is such a peak).
            i = torch.round(poses.psi_rad[t] / grid.step_rad).long()
            rows = torch.arange(len(t))
            ym, y0, yp = (corr[rows, (i + d) % grid.angular_samples] for d in (-1, 0, 1))
            height = parabolic_height(ym, y0, yp, parabolic_offset(ym, y0, yp))
            norm = _polar_norm(polar, grid)
            poses.score[t] = (height / (norm * refs.norm[c])).to(poses.score.dtype)
        return poses

    def turned_away(self, batches: Iterable[Prepared], state: ClassState, shifts: ShiftSearch) -> ClassState:
        """``state`` with every particle ``batches`` yields at the best coarse turn and shift against its own
        class among the turns a quarter turn or more from its current one (on the rings of
        :meth:`search_globally`), for the next :meth:`search` to refine. A view that looks nearly the same
        turned by half a turn, at low resolution, can hold a particle a few pixels off at the wrong one of
        the two: about the wrong centre the wrong turn correlates best, and the global search, on its few
        rings, can prefer it too. This search makes the other half of the turns meet the finer search."""
        grid = self.grid
        averages = averages_of(state.sums, grid)
        cropped = _coarse_turns(torch.stack([a.reference for a in averages]), supported_band(averages))
        size, n_turns = cropped.shape[-2], cropped.shape[1]
        away = torch.arange(n_turns // 4, n_turns - n_turns // 4 + 1)  # turn steps from the current turn
        step = _particles_per_product(shifts, size, grid.box, len(away))
        poses = state.poses.copy()
        for idx, _, whitened, _ in batches:
            t = torch.from_numpy(idx)
            small = _cropped(torch.fft.rfft2(whitened), size)
            current = torch.round(poses.psi_rad[t] / GLOBAL_TURN_RAD).long()
            for start in range(0, len(t), step):
                p = slice(start, start + step)
                turns = (current[p, None] + away) % n_turns  # (b, A)
                spectra = cropped[state.classes[t[p]][:, None], turns]  # (b, A, s, s//2 + 1)
                shift, height = shifts.peak((small[p][:, None] * spectra.conj()).flatten(0, 1), grid.box)
                best = height.reshape(len(turns), -1).argmax(dim=1)
                rows = torch.arange(len(best))
                poses.shift_px[t[p]] = shift.reshape(len(turns), -1, 2)[rows, best]
                poses.psi_rad[t[p]] = turns[rows, best] * GLOBAL_TURN_RAD
        return ClassState(poses, state.classes, state.sums, state.margins)

    def _shifted(self, whitened: torch.Tensor, turned: tuple[torch.Tensor, torch.Tensor], psi_rad: torch.Tensor,
                 loglik: torch.Tensor, penalty: torch.Tensor, held: torch.Tensor | None,
                 shifts: ShiftSearch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The class, (b, 2) shift and log-likelihood (offset prior included) of each particle after a
        translational search against its
        ``SHIFT_CANDIDATES`` likeliest classes (or only its ``held`` class), each at the particle's best turn
        for that class (to the nearest of the references' precomputed turns, ``turned``: their spectra at
        the full box and cropped to the band the references hold). Searching more than the current class
        keeps a particle far off-centre from being held by a blurred class whose centre it happens to fit.
        The classes are compared on the cropped band (cheaper; the references hold nothing beyond it), and
        the winner's shift is then found at the full box."""
        full, cropped = turned
        b, box, size = len(whitened), self.grid.box, cropped.shape[-2]
        n_turns = full.shape[1]
        turn = torch.round(psi_rad / (2 * math.pi / n_turns)).long() % n_turns  # (b, K)
        particle_fft = torch.fft.rfft2(whitened)
        if held is not None:
            chosen = held
        else:
            candidates = loglik.topk(min(SHIFT_CANDIDATES, loglik.shape[1]), dim=1).indices  # (b, M)
            rows = torch.arange(b)[:, None].expand_as(candidates)
            small = _cropped(particle_fft, size)
            peaks = []
            step = max(1, SHIFT_IMAGES // b)
            for m in range(0, candidates.shape[1], step):
                c = candidates[:, m:m + step]
                u = turn[rows[:, m:m + step], c]
                peaks.append(shifts.peak((small[:, None] * cropped[c, u].conj()).flatten(0, 1), box)[1].reshape(b, -1))
            shifted = torch.cat(peaks, dim=1).double() - penalty[rows, candidates]
            chosen = candidates[torch.arange(b), shifted.argmax(dim=1)]
        u = turn[torch.arange(b), chosen]
        shift, height = shifts.peak(particle_fft * full[chosen, u].conj(), box)
        return chosen, shift, height.double() - penalty[torch.arange(b), chosen]
