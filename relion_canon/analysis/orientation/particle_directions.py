"""Each particle's own viewing direction, searched near its class's (``--ref``).

A 2-D class holds the particles of one view only when the molecule shows a few discrete views. Under continuous
orientations a class gathers directions tens of degrees apart (its average blends them), and the one direction
matched for the class is a poor prior for most of its particles: RELION's local searches reach about three
sigma, a few degrees, about the prior. So every particle of a matched class is also matched on its own, against
the reference's projections over a patch of directions about its class's.

Geometry. The class average is the projection at A_c = ``euler_matrix(rot, tilt, α)``, its centre at s
(:mod:`.matching`). A particle turned back into its class's frame (its in-class ψ and shift undone, as the class
average sums it) is compared with the projections at A_c·Q_dᵀ, Q_d the smallest rotation that takes the class's
direction onto d, for each d of a patch about it: the projection carried along the sphere with no in-plane turn
of its own. The particle is also turned by a few in-plane offsets δ. Its orientation is then Rz(ψ + δ)·A_c·Q_dᵀ,
that is the Euler angles of A_c·Q_dᵀ with ψ + δ added to psi, and its origin carries s by ψ + δ
(:mod:`.priors`).

Score. Under Gaussian noise of spectrum N, with the particle's CTF C and its own contrast scale fitted, the
log-likelihood of a projection P is ½ (Σ Re(P̄·C·X)/N)² / Σ C²|P|²/N over a constant (positive correlation only),
over the rings where the reference holds signal. A particle's best projection wanders a few degrees by noise
alone, so directions are not simply ranked by it: each class's spread σ is fitted to its particles' likelihoods
(:func:`spread_fitted`) and every particle takes its best direction under the prior exp(−θ²/2σ²), θ its angle
from the class's. A class of one view keeps its direction; one that spans a range lets its particles spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from relion_canon.analysis.alignment_reference import turned_back
from relion_canon.analysis.orientation.directions import patch
from relion_canon.analysis.orientation.matching import ClassMatch, Matcher
from relion_canon.analysis.prepared_particles import Prepared
from relion_canon.geometry import column_multiplicity, parabolic_offset, wrap_deg
from relion_canon.geometry.projection import euler_angles, euler_matrix, half_from_images, shift_phase


@dataclass(frozen=True)
class DirectionSearch:
    """The patch each particle is searched over: directions on a ``step_deg`` grid within ``radius_deg`` of its
    class's, each with in-plane offsets of ``inplane_step_deg`` up to ``inplane_steps`` steps either way (the
    best offset refined between steps by a parabola)."""

    radius_deg: float = 30.0
    step_deg: float = 5.0
    inplane_step_deg: float = 3.0
    inplane_steps: int = 2

    @property
    def inplane_deg(self) -> np.ndarray:
        return self.inplane_step_deg * np.arange(-self.inplane_steps, self.inplane_steps + 1, dtype=np.float64)


@dataclass
class ParticleDirections:
    """The orientations found, for the particles searched (elsewhere NaN)."""

    rot_deg: np.ndarray  # (N,)
    tilt_deg: np.ndarray
    psi_deg: np.ndarray
    inplane_deg: np.ndarray  # (N,) δ: the in-class ψ the projection's centre is carried by is ψ + δ
    moved_deg: np.ndarray  # (N,) angle between the particle's direction and its class's
    sigma_deg: dict[int, float] = field(default_factory=dict)  # each class's fitted spread (:func:`spread_fitted`)

    @property
    def searched(self) -> np.ndarray:
        return ~np.isnan(self.moved_deg)

    def spread(self, number: int, rows: np.ndarray, search: DirectionSearch) -> dict[str, Any]:
        """Class ``number``'s figures (``rows``: its particles): its fitted spread σ, how far its particles'
        directions lie from the class's (median and 90th percentile), and the share at the patch's edge (more
        there than the patch holds: the class's own match may be off, or it spans more than the patch)."""
        moved = self.moved_deg[rows]
        moved = moved[~np.isnan(moved)]
        if not len(moved):
            return {}
        return {"particle_direction_spread_deg": self.sigma_deg.get(number),
                "particle_direction_median_deg": float(np.median(moved)),
                "particle_direction_p90_deg": float(np.percentile(moved, 90)),
                "particle_direction_at_edge": float(np.mean(moved > search.radius_deg - search.step_deg / 2))}


def transported(matrix: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(m, 3, 3) ``matrix`` (3, 3, RELION's A) carried to each of (m, 3) unit ``directions`` by the smallest
    rotation Q that takes its own direction (its last row) there: A·Qᵀ, whose last row is the direction."""
    own = matrix[2] / np.linalg.norm(matrix[2])
    axis = np.cross(own[None], directions)
    sine = np.linalg.norm(axis, axis=1)
    angle = np.arctan2(sine, directions @ own)
    axis = axis / np.maximum(sine, 1e-12)[:, None]
    q = Rotation.from_rotvec(axis * angle[:, None]).as_matrix()
    return np.einsum("ij,mkj->mik", matrix, q)


class _ClassPatch:
    """One class's candidate projections as the score reads them: their band-limited transforms, each
    coefficient counted as often as the full plane holds it, as a real (2F, m) matrix; and their power over N
    per ring, (rings, m)."""

    def __init__(self, match: ClassMatch, matcher: Matcher, noise: torch.Tensor, band_ring: int,
                 search: DirectionSearch):
        a_c = euler_matrix(match.rot_deg, match.tilt_deg, match.psi_deg)
        directions = patch(a_c[2], search.step_deg, search.radius_deg)
        self.euler = euler_angles(transported(a_c, directions))  # (m, 3)
        self.moved_deg = np.rad2deg(np.arccos(np.clip(directions @ a_c[2], -1.0, 1.0)))
        grid = matcher.grid
        # The projections' transforms straight from the map's, sampled only within the band and moved by s.
        spectra = matcher.projector.slices(euler_matrix(*self.euler.T), max_ring=float(band_ring) + 1.0)
        phase = shift_phase(grid.box, np.asarray([match.shift_px], dtype=np.float64))
        if phase is not None:
            spectra = spectra * torch.from_numpy(phase)
        band = ((grid.rings >= 1) & (grid.rings <= band_ring)).float()
        twice = column_multiplicity(grid.box).expand_as(band)  # rfft2 holds half the plane
        self.keep = band.reshape(-1) > 0
        self.twice = twice.reshape(-1)[self.keep]
        # The particles come whitened (C·X/N): the cross term needs no more 1/N, the projection's norm does.
        weighted = (spectra * twice).reshape(len(spectra), -1)[:, self.keep]
        self.matrix = torch.cat([weighted.real, weighted.imag], dim=1).T.contiguous()  # (2F, m)
        power = (spectra.abs() ** 2 * (band * twice / noise[grid.rings])).reshape(len(spectra), -1)
        rings = grid.rings.reshape(-1)
        self.ring_power = torch.zeros(len(spectra), grid.n_rings).index_add_(1, rings, power).T.contiguous()

    def log_likelihoods(self, spectra: torch.Tensor, ctf2: torch.Tensor,
                        n_offsets: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For (n_offsets·b, B, B//2 + 1) whitened, turned-back particle transforms (offset-major) and their
        (b, rings) ring means of C²: (b, m) each candidate's log-likelihood at its best in-plane offset (over a
        constant), and that offset in steps from the first (fractional: refined by a parabola through the
        neighbouring offsets)."""
        flat = spectra.reshape(len(spectra), -1)[:, self.keep]
        cross = torch.cat([flat.real, flat.imag], dim=1) @ self.matrix  # (n_offsets·b, m)
        # Turning a particle by interpolation blurs it by an amount that depends on the angle (none at 90°): each
        # offset's cross term is scaled to the particle's mean power over its offsets, so they compare fairly.
        own = ((flat.abs() ** 2) * self.twice).sum(dim=1).clamp(min=1e-30).reshape(n_offsets, -1)
        fair = torch.sqrt(own.mean(dim=0, keepdim=True) / own).reshape(-1)
        norm = torch.sqrt((ctf2 @ self.ring_power).clamp(min=1e-30))  # (b, m)
        score = (cross * fair[:, None]).reshape(n_offsets, len(ctf2), -1) / norm[None]
        loglik = 0.5 * score.clamp(min=0.0) ** 2  # the contrast scale fitted, positive only
        offset = loglik.argmax(dim=0)  # (b, m)
        at = torch.gather(loglik, 0, offset[None])[0]
        lo = torch.gather(loglik, 0, (offset - 1).clamp(min=0)[None])[0]
        hi = torch.gather(loglik, 0, (offset + 1).clamp(max=n_offsets - 1)[None])[0]
        inner = (offset > 0) & (offset < n_offsets - 1)
        fraction = torch.where(inner, parabolic_offset(lo, at, hi), torch.zeros_like(at))
        return at, offset + fraction


def spread_fitted(loglik: np.ndarray, moved_deg: np.ndarray, floor_deg: float,
                  iterations: int = 200) -> tuple[float, np.ndarray]:
    """The spread σ (degrees) of a class's directions about its own, fitted by expectation-maximisation to its
    particles' (n, m) log-likelihoods over candidates ``moved_deg`` (m,) away, under a Gaussian prior
    exp(−θ²/2σ²) on the sphere; and each particle's best candidate under that prior.

    Why: at low SNR the best projection of one particle wanders a few degrees by noise alone. A class of one view
    then fits σ near 0 and keeps every particle at its direction (found from hundreds of particles, far more
    precise); a class that spans a range of directions fits that range and lets each particle go its own way."""
    theta2 = np.asarray(moved_deg, dtype=np.float64) ** 2
    ll = np.asarray(loglik, dtype=np.float64)
    sigma2 = max(float(np.max(theta2)) / 4.0, floor_deg**2)
    for _ in range(iterations):
        post = ll - theta2[None] / (2.0 * sigma2)
        post = np.exp(post - post.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        # A 2-D Gaussian's mean squared angle is 2σ².
        updated = max(float((post @ theta2).mean()) / 2.0, floor_deg**2)
        done = abs(updated - sigma2) < 1e-4 * sigma2
        sigma2 = updated
        if done:
            break
    return float(np.sqrt(sigma2)), np.argmax(ll - theta2[None] / (2.0 * sigma2), axis=1)


def particle_directions(particles: Iterable[Prepared], class_of: np.ndarray, matches: dict[int, ClassMatch],
                        psi_deg: np.ndarray, shift_px: np.ndarray, matcher: Matcher, noise: torch.Tensor,
                        search: DirectionSearch = DirectionSearch()) -> ParticleDirections:
    """Every particle's orientation from its own best projection about its class's match (module docstring).

    ``particles`` yields prepared batches (indices into the (N,) arrays) of the particles to search; ``class_of``
    (N,) is each particle's class number, ``matches`` the matched classes, ``psi_deg`` (N,) and ``shift_px``
    (N, 2) the in-class angles and centres of the 2-D alignment, ``noise`` the spectrum they were whitened by."""
    n = len(psi_deg)
    out = ParticleDirections(*(np.full(n, np.nan) for _ in range(5)))
    band_ring = min(matcher.reference_ring, matcher.box // 2 - 1)  # the rings where the reference holds signal
    offsets = search.inplane_deg
    patches: dict[int, _ClassPatch] = {}
    found: dict[int, list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]] = {}
    for idx, _, whitened, ctf2 in particles:
        for number in map(int, np.unique(class_of[idx])):
            if number not in matches:
                continue
            take = np.flatnonzero(class_of[idx] == number)
            rows = idx[take]
            if number not in patches:
                patches[number] = _ClassPatch(matches[number], matcher, noise, band_ring, search)
            psi = np.add.outer(offsets, psi_deg[rows]).reshape(-1)  # offset-major
            shift = torch.from_numpy(np.tile(shift_px[rows], (len(offsets), 1))).float()
            turned = turned_back(whitened[take].repeat(len(offsets), 1, 1), torch.from_numpy(np.deg2rad(psi)).float(),
                                 shift)
            # The slices' origin is pixel 0: the particles' transforms are taken about the same.
            loglik, steps = patches[number].log_likelihoods(half_from_images(turned * matcher.grid.mask),
                                                                 ctf2[take], len(offsets))
            found.setdefault(number, []).append((rows, loglik, steps))
    for number, parts in found.items():
        cp = patches[number]
        rows = np.concatenate([r for r, _, _ in parts])
        loglik = torch.cat([ll for _, ll, _ in parts]).numpy()
        steps = torch.cat([st for _, _, st in parts]).numpy()
        out.sigma_deg[number], which = spread_fitted(loglik, cp.moved_deg, floor_deg=search.step_deg / 4)
        # At the class's own direction a particle keeps the in-plane angle of its 2-D alignment, found at full
        # resolution against its class average; the offsets serve the projections carried away from it.
        delta = np.where(which == 0, 0.0, offsets[0] + steps[np.arange(len(rows)), which] * search.inplane_step_deg)
        out.rot_deg[rows], out.tilt_deg[rows] = cp.euler[which, 0], cp.euler[which, 1]
        out.inplane_deg[rows] = delta
        out.psi_deg[rows] = wrap_deg(cp.euler[which, 2] + psi_deg[rows] + delta)
        out.moved_deg[rows] = cp.moved_deg[which]
    return out
