"""Stage 4: junk: per-particle features → the detectors' standardised scores → the outlier flag.

The detectors run on what separates junk from particles. With refinement that is, first, how well the
particle matches the CTF-modulated reference (correlation at the best angle and at the best defocus, and how
far that defocus is from the STAR's), with the latent's two principal components; without it, the model's
latent alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.outliers import flag_outliers, outlier_scores

log = logging.getLogger(__name__)

# Short names users type (RELION GUI, CLI) → the detectors' names in analysis.outliers.
OUTLIER_METHODS = {"iforest": "isolation_forest", "covariance": "robust_covariance"}


@dataclass
class Junk:
    """The score written as ``rlnParticleSelectZScore``, each detector's, the flag, and the report entry."""

    z: np.ndarray  # (N,) high = likely junk
    flag: np.ndarray  # (N,) bool: z above the threshold
    per_detector: dict[str, np.ndarray]
    report: dict[str, Any]


def outlier_features(latent: np.ndarray, score: np.ndarray, fit_peak: np.ndarray, defocus_fit_A: np.ndarray,
                     defocus_input_A: np.ndarray | None) -> np.ndarray:
    """(N, p) features for the detectors: alignment score, latent polar coordinates and, with a CTF fit, its
    peak and distance from the STAR's defocus; without refinement (NaN scores) the latent's principal
    components."""
    if not np.all(np.isfinite(score)):
        # The latent alone; a covariance of L features needs several times L particles, so keep only as many
        # principal components as the particles support.
        keep = int(min(latent.shape[1], max(2, latent.shape[0] // 10)))
        centred = latent - latent.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:keep].T
    angle, radius = polar_readout(latent)
    columns = [score, radius * np.cos(angle), radius * np.sin(angle)]
    if np.all(np.isfinite(fit_peak)) and defocus_input_A is not None:
        columns += [fit_peak, np.abs(defocus_fit_A - defocus_input_A)]
    return np.column_stack(columns)


def find_junk(features: np.ndarray, method: str, threshold: float, seed: int, clock: Clock) -> Junk:
    """Score ``features`` with ``method`` (a user's name, see :data:`OUTLIER_METHODS`) and flag above ``threshold``."""
    clock.lap()
    result = outlier_scores(features, method=OUTLIER_METHODS.get(method, method), seed=seed)
    clock.lap("outliers")
    flag = flag_outliers(result.z, threshold)
    log.info(f"Outliers ({method}): {int(flag.sum())} of {len(flag)} particles above Z = {threshold:g}")
    report = {**result.report(), "threshold": threshold, "n_flagged": int(flag.sum())}
    return Junk(z=result.z, flag=flag, per_detector=result.per_detector, report=report)
