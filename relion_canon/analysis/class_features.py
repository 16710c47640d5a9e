"""Rotation-invariant descriptions of particles, and the initial classes they give.

A particle sampled on rings about its centre and transformed along the angle gives coefficients c(r, k); a
turn by ψ multiplies each by e^{ikψ}. So |c(r, k)|² (the rotational power spectrum) and the products
c(r, k)·c̄(r + d, k) of neighbouring rings (a bispectrum restricted to one angular order) do not change when
the particle turns. The products' imaginary parts change sign under a mirror, so a view and its mirror image
(projections from opposite sides) are told apart, as a 2-D classification must: no turn maps one onto the
other. The images are the CTF-weighted, whitened particles the alignment compares, so the CTF's sign flips
are gone and every frequency counts as much as its signal-to-noise ratio allows.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from relion_canon.analysis.alignment import SearchGrid
from relion_canon.analysis.prepared_particles import Prepared
from relion_canon.geometry import sample_polar
from relion_canon.parallel import summed

MAX_ORDER = 12  # angular orders kept: finer angular detail is mostly noise at the SNR of particles
RING_STEPS = (1, 2)  # ring separations of the cross-ring products


def invariant_features(batches: Iterable[Prepared], rows: np.ndarray, grid: SearchGrid,
                       max_order: int = MAX_ORDER) -> np.ndarray:
    """(len(rows), F) rotation-invariant, mirror-sensitive features of the particles ``rows`` (sorted), in
    that order, from their polar transforms about the box centre; ``batches`` yields these rows (and no
    others; under torchrun, this process's share of them). Only these rows are held: the rounds' subset of a
    million particles needs no million-row array."""
    width = _features(torch.zeros(1, grid.box, grid.box), grid, max_order).shape[1]
    out = torch.zeros(len(rows), width, dtype=torch.float64)
    for idx, _, whitened, _ in batches:
        out[torch.from_numpy(np.searchsorted(rows, idx))] = _features(whitened, grid, max_order)
    return summed(out).numpy()  # each process filled the rows it read; the others are zero


def _features(whitened: torch.Tensor, grid: SearchGrid, max_order: int) -> torch.Tensor:
    """(b, F) float64 the invariants of a batch of whitened particles."""
    coefficients = torch.fft.rfft(sample_polar(whitened, grid.xy), dim=-1)[..., : max_order + 1]
    parts = [coefficients.abs().square().flatten(1)]
    for d in RING_STEPS:
        cross = coefficients[:, :-d, 1:] * coefficients[:, d:, 1:].conj()
        parts += [cross.real.flatten(1), cross.imag.flatten(1)]
    return torch.cat(parts, dim=1).double()


def initial_classes(features: np.ndarray, n_classes: int, seed: int, n_components: int = 24) -> np.ndarray:
    """(N,) class index per particle: k-means on the leading principal components of the standardised
    features (noise spreads over every component; the views' differences gather in the first few)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if n_classes <= 1 or len(features) <= n_classes:
        return np.zeros(len(features), dtype=np.int64)
    scale = features.std(axis=0)
    x = (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    components = min(n_components, x.shape[1], len(x) - 1)
    reduced = PCA(components, random_state=seed).fit_transform(x)
    labels = KMeans(n_classes, n_init=4, random_state=seed).fit_predict(reduced)
    return labels.astype(np.int64)
