"""The typical alignment score at each particle's defocus.

A particle's correlation with its class average grows with its CTF's strength at low frequencies, which grows
with defocus: close to focus the same view matches its average far less well than at 2–3 µm. A score judged
against one typical value for all particles therefore flags good particles close to focus and spares junk far
from it. The trend is read from the data: the median score of the particles in each defocus quantile.
"""

from __future__ import annotations

import numpy as np

# Quantile bins of defocus, each of at least this many particles, and at most this many bins: enough to follow
# the trend, each still with a steady median.
PARTICLES_PER_BIN = 200
MAX_BINS = 8


def defocus_bins(defocus_A: np.ndarray, n_bins: int) -> np.ndarray:
    """(N,) each particle's defocus quantile bin, 0 … n_bins − 1 (fewer where many particles share a
    defocus)."""
    defocus_A = np.asarray(defocus_A, dtype=np.float64)
    edges = np.unique(np.quantile(defocus_A, np.linspace(0.0, 1.0, n_bins + 1))[1:-1])
    return np.searchsorted(edges, defocus_A, side="right")


def median_at_defocus(values: np.ndarray, defocus_A: np.ndarray | None) -> np.ndarray:
    """(N,) the median of ``values`` over the particles whose defocus falls in each particle's quantile bin;
    the median of all without a defocus or with too few particles for two bins."""
    values = np.asarray(values, dtype=np.float64)
    n_bins = min(MAX_BINS, len(values) // PARTICLES_PER_BIN)
    overall = float(np.median(values))
    if defocus_A is None or n_bins < 2 or not np.all(np.isfinite(defocus_A)):
        return np.full(len(values), overall)
    bins = defocus_bins(defocus_A, n_bins)
    medians = np.array([np.median(values[bins == b]) if np.any(bins == b) else overall
                        for b in range(int(bins.max()) + 1)])
    return medians[bins]


def score_at_defocus(score: np.ndarray, defocus_A: np.ndarray | None) -> np.ndarray:
    """(N,) the median score of the particles whose defocus falls in each particle's quantile bin, relative to
    the median of all: 1 everywhere without a defocus or with too few particles for two bins."""
    score = np.asarray(score, dtype=np.float64)
    overall = float(np.median(score))
    if overall <= 0:
        return np.ones(len(score))
    return np.clip(median_at_defocus(score, defocus_A) / overall, 1e-3, None)


def below_typical(score: np.ndarray, defocus_A: np.ndarray | None) -> np.ndarray:
    """(N,) how far each score falls below the typical score at its defocus (the median of all times
    :func:`score_at_defocus`): the trend moves the mean, while the noise of a correlation stays the same."""
    score = np.asarray(score, dtype=np.float64)
    return float(np.median(score)) * score_at_defocus(score, defocus_A) - score
