"""Finding classes that hold more than one view, and splitting them in two.

A class starts from k-means on rotation-invariant features, and two views whose invariants are alike can
share one. The refinement cannot part them: their particles are all aligned to one reference, a blend of
the views, and each fits that blend better than any other class. Their average is sharp enough to pass as a
view, so the class has to be judged by its particles.

Each particle, turned into its class's frame, less what the class average predicts for it (the average
times its CTF²) leaves a residual. In a class of one view that residual is noise: over the class, the
residuals' covariance has no direction of much more variance than the rest. In a class of two views, the
difference of the views is in every residual, with a sign that depends on the view: one strong direction.
The test compares the leading eigenvalue of the residuals' covariance (over their median eigenvalue) with
the same figure for Gaussian noise of the same shape, and a class whose figure is :data:`SPLIT_FACTOR` times
noise's is split by 2-means on its two leading principal components. The residuals are standardised robustly
and each particle's scaled to the same norm first, so that a few junk particles in a class of one view do
not pass for a second view. The two parts of a split merge again (by the classification's merge rule) only
when, together, they pass the test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from relion_canon.analysis.alignment import Poses, SearchGrid
from relion_canon.analysis.alignment_reference import HalfSetSums, turned_back
from relion_canon.parallel import gathered
from relion_canon.analysis.class_search import ClassState, averages_of, sums_of, supported_band
from relion_canon.analysis.prepared_particles import Prepared, PreparedParticles
from relion_canon.geometry import wrap_rad

log = logging.getLogger(__name__)

# The leading eigenvalue over the median of a class's residuals, as a multiple of the same figure for
# Gaussian noise of the same shape, from which the class counts as more than one view. Classes of one view
# sit near 1 and classes of two views above (benchmarks/classify/README.md gives the measured ranges).
SPLIT_FACTOR = 1.25
SAMPLE = 1000  # particles of a class the test looks at (the rest are placed by the split it finds)
MIN_SPLIT_PART = 20  # particles: a part smaller than this is not worth a class of its own
# The test looks at the rings where a class's Wiener filter passes this or more: the others would add
# noise-only dimensions that drown a difference of views.
SPLIT_MIN_GAIN = 0.5


@dataclass
class SplitTest:
    """One class's test: how far its residuals' leading direction stands above noise, and the split it gives."""

    ratio: float  # the class's leading-eigenvalue figure over noise's
    members: np.ndarray  # (n,) rows of the class's particles
    side: np.ndarray  # (n,) bool: the particles of the second part

    @property
    def splits(self) -> bool:
        return self.ratio >= SPLIT_FACTOR


@dataclass
class _Standardiser:
    """Each column centred on its median and scaled by its MAD (so that the coefficients' different CTF and
    noise power weigh alike), then each row scaled to the median row norm: a few particles unlike the rest
    (junk, say) would otherwise each make a direction of large variance of their own, and a class of one
    view with a few such particles would look like two views."""

    centre: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "_Standardiser":
        centre = x.median(dim=0).values
        return cls(centre, (1.4826 * (x - centre).abs().median(dim=0).values).clamp(min=1e-12))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.centre) / self.scale
        norms = z.norm(dim=1).clamp(min=1e-30)
        return z * (norms.median() / norms)[:, None]


def _spread(singular_values: torch.Tensor, n: int, p: int) -> float:
    """Leading eigenvalue over the median eigenvalue of the covariance of a centred (n, p) matrix with these
    singular values (centring leaves min(n, p) − 1 of them that are not zero)."""
    eig = (singular_values**2)[: min(n, p) - 1]
    return float(eig[0] / eig.median().clamp(min=1e-30))


def _noise_spread(n: int, p: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    z = _Standardiser.fit(x)(x)
    return _spread(torch.linalg.svdvals(z - z.mean(dim=0)), n, p)


def _band_coefficients(box: int, band: int) -> torch.Tensor:
    """(B, B//2 + 1) bool: the rfft2 coefficients within ``band`` rings, each once (kx > 0: the kx = 0 column
    repeats every coefficient as its conjugate)."""
    ky = torch.fft.fftfreq(box) * box
    kx = torch.fft.rfftfreq(box) * box
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return (radius <= band) & (kx[None, :] > 0)


def residual_features(batches: Iterable[Prepared], poses: Poses, classes: torch.Tensor, sums: HalfSetSums,
                      grid: SearchGrid, band: int, which: np.ndarray
                      ) -> tuple[dict[int, tuple[np.ndarray, torch.Tensor]], torch.Tensor]:
    """For each class ``c`` in ``which``: its particles' rows and their residuals (n, p) as real features, the
    rfft2 coefficients within ``band`` rings of each particle turned into the class frame, less the class's
    unfiltered average times the particle's CTF² per ring; and the ring of each feature (p,)."""
    box = grid.box
    keep = _band_coefficients(box, band)
    mean = sums.unfiltered_spectra(grid.rings)
    wanted = torch.zeros(sums.n_classes, dtype=torch.bool)
    wanted[torch.from_numpy(np.asarray(which, dtype=np.int64))] = True
    rows: dict[int, list[np.ndarray]] = {int(c): [] for c in which}
    feats: dict[int, list[torch.Tensor]] = {int(c): [] for c in which}
    for idx, weighted, _, ctf2 in batches:
        t = torch.from_numpy(idx)
        c = classes[t]
        sel = wanted[c]
        if not bool(sel.any()):
            continue
        t, c = t[sel], c[sel]
        canonical = torch.fft.rfft2(turned_back(weighted[sel], poses.psi_rad[t], poses.shift_px[t]))
        residual = (canonical - ctf2[sel][:, grid.rings] * mean[c])[:, keep]
        real = torch.cat([residual.real, residual.imag], dim=1)
        for k in torch.unique(c).tolist():
            m = c == k
            rows[k].append(t[m].numpy())
            feats[k].append(real[m])
    ring = grid.rings[keep]
    found = {}
    for k in rows:  # under torchrun, every process's particles of the class, in row order
        joined = gathered(np.concatenate(rows[k]) if rows[k] else np.zeros(0, dtype=np.int64),
                          torch.cat(feats[k]) if feats[k] else torch.zeros(0, 2 * int(keep.sum())))
        if len(joined[0]):
            found[k] = (joined[0], joined[1].double())
    return found, torch.cat([ring, ring])


def split_test(members: np.ndarray, features: torch.Tensor, seed: int) -> SplitTest:
    """Whether the residuals ``features`` (n, p) of one class's particles ``members`` show two views, and the
    split by 2-means on their two leading principal components (on at most :data:`SAMPLE` of them; the others
    go to the nearer part)."""
    from sklearn.cluster import KMeans

    n = len(members)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, SAMPLE, replace=False)) if n > SAMPLE else np.arange(n)
    x = features[torch.from_numpy(sample)]
    standardise = _Standardiser.fit(x)
    z = standardise(x)
    z_centre = z.mean(dim=0)
    _, singular, v = torch.linalg.svd(z - z_centre, full_matrices=False)
    ratio = _spread(singular, *x.shape) / _noise_spread(len(sample), x.shape[1], seed)
    scores = ((standardise(features) - z_centre) @ v[:2].T).numpy()
    km = KMeans(2, n_init=4, random_state=seed).fit(scores[sample])
    side = km.predict(scores) == 1
    return SplitTest(ratio, members, side)


@dataclass
class Splitter:
    """The one-view test and the split over one classification's prepared particles (their ``for_rounds``)."""

    particles: PreparedParticles
    grid: SearchGrid
    seed: int

    def tests(self, state: ClassState, which: np.ndarray) -> dict[int, SplitTest]:
        """The one-view test of each class in ``which``."""
        averages = averages_of(state.sums, self.grid)
        features, ring = residual_features(self.particles.for_rounds(), state.poses, state.classes, state.sums,
                                           self.grid, supported_band(averages), which)
        tests = {}
        for c, (members, x) in features.items():
            cols = averages[c].gain[ring] >= SPLIT_MIN_GAIN
            if int(cols.sum()) >= 2:
                tests[c] = split_test(members, x[:, cols], self.seed + c)
        return tests

    def split(self, state: ClassState, rows: np.ndarray, smallest: float, room: int,
              skip: np.ndarray | None = None) -> tuple[torch.Tensor, list[tuple[int, SplitTest]]] | None:
        """New class indices with every class of ``rows`` that fails the test split in two (the second part
        numbered after the existing classes; the largest excess first, at most ``room``), parts of at least
        ``smallest`` particles; and the (class, test) of each split. Classes where ``skip`` (K,) is true are
        not tested. None when no class splits."""
        k = state.sums.n_classes
        counts = np.bincount(state.classes[torch.from_numpy(rows)].numpy(), minlength=k)
        testable = counts >= 2 * max(smallest, MIN_SPLIT_PART)
        which = np.flatnonzero(testable if skip is None else testable & ~skip)
        if not len(which) or room < 1:
            return None
        tests = self.tests(state, which)
        for c, t in sorted(tests.items()):
            log.debug("classification: class %d (%d particles): leading residual variance %.2f× noise's", c + 1,
                      len(t.members), t.ratio)
        splits = sorted(((c, t) for c, t in tests.items()
                         if t.splits and min(t.side.sum(), (~t.side).sum()) >= smallest),
                        key=lambda ct: -ct[1].ratio)[:room]
        if not splits:
            return None
        classes = state.classes.clone()
        for new, (_, t) in enumerate(splits, start=k):
            classes[torch.from_numpy(t.members[t.side])] = new
        return classes, splits

    def still_two_views(self, state: ClassState, small: int, large: int, turn_rad: float) -> bool:
        """Whether classes ``small`` and ``large`` (two parts of a split), merged as the classification merges
        them (``small``'s particles turned by ``turn_rad`` into ``large``'s frame), still fail the test: then
        their averages agree only because they are noisy, and they stay apart."""
        members = state.classes == small
        poses = state.poses.copy()
        poses.psi_rad[members] = wrap_rad(poses.psi_rad[members] - turn_rad)
        classes = torch.where(members, large, state.classes)
        union = ClassState(poses, classes, sums_of(self.particles.for_rounds(), poses, classes, state.sums.n_classes,
                                                  self.grid))
        test = self.tests(union, np.array([large])).get(large)
        return test is not None and test.splits
