"""Junk scores per particle from its features (paper B, Sec. 3.2.1): three detectors and their ensemble.

Paper B scores the latent means with a robust covariance (Mahalanobis) distance, an isolation forest and
the local outlier factor, and ranks particles by each. Here each detector's raw measure becomes a robust
z-score, ``(s − median) / (1.4826 · MAD)`` over all particles, so that 0 is a typical particle, 1 one robust
standard deviation more junk-like, and *high means likely junk*, the orientation RELION gives
``rlnParticleSelectZScore``. Before standardising, each raw measure is put on a scale on which inliers'
scores are closer to normal, so that one threshold means more nearly the same for every detector: the
squared Mahalanobis distance d² of p features through the Wilson–Hilferty cube root (d²/p)^(1/3), close
to normal for Gaussian inliers;
the isolation forest's 2^(−E[h]/c) through its logarithm, i.e. the (negated) mean isolation path length;
the LOF ratio through its logarithm. These are monotone, so they change no ranking and no AUC. LOF stays
heavy-tailed all the same (most inliers sit at LOF ≈ 1, which makes its MAD tiny): on clean Gaussian data
it flags many times more particles above z = 3 than the other detectors or the ensemble (the fractions are
in ``benchmarks/README.md``, "Figures behind the defaults"). So LOF alone wants a higher threshold than
:data:`DEFAULT_THRESHOLD`.

``ensemble`` is the median of the three standardised scores, standardised again: a particle is junk when
two of the three detectors agree it is. Each detector is blind to some kind of junk the others see: the
covariance distance sees only "far from the centre of one ellipsoid", the isolation forest dilutes
dense clusters, and LOF sees only local density contrast, so a compact cluster of junk larger than its
neighbourhood (empty picks all encode alike) looks normal to it. A mean would let that one blind
detector drag a clear case down; the median ignores it (the AUCs of both on the tests' junk are in
``benchmarks/README.md``).

Features are standardised per column first, robustly (median and MAD, as junk must not set the scale).

Scaling: for N above ``max_fit`` (10,000 by default) every detector is *fitted* on a random subsample of
``max_fit`` particles (drawn with ``seed``) and *scores* all N, so the cost grows linearly with N. The
isolation forest fits on 256 points per tree anyway. The robust covariance is fitted on the subsample
(see :func:`_robust_covariance`) and the Mahalanobis distance of every particle then costs O(N p²). LOF is
fitted with ``novelty=True`` on the subsample, and every other particle costs one k-nearest-neighbour query
into those ``max_fit`` points, instead of the full N-point neighbour graph and its memory; the query is
brute force (BLAS distance blocks), which was faster than scikit-learn's k-d or ball tree at 8 features
and only gets relatively better with more. Particles of the subsample keep their fit-time LOF
(their neighbours within the subsample, themselves excluded), the same quantity the others get from the
novelty query; the others are queried in blocks, so memory does not grow with N beyond the scores.
Measured times and memory at 1e5 and 1e6 particles: ``benchmarks/README.md``. The result is deterministic
for a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.linalg import pinvh
from scipy.stats import chi2
from sklearn import config_context
from sklearn.covariance import MinCovDet
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

Method = Literal["ensemble", "isolation_forest", "lof", "robust_covariance"]
DETECTORS: tuple[str, ...] = ("isolation_forest", "lof", "robust_covariance")
METHODS: tuple[str, ...] = ("ensemble", *DETECTORS)

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation
# Without a contamination estimate, flag robust z > 3: few clean Gaussian particles pass it (benchmarks/README.md).
DEFAULT_THRESHOLD = 3.0
DEFAULT_MAX_FIT = 10_000
LOF_NEIGHBOURS = 20  # scikit-learn's default; larger k did not help on clustered junk and costs O(k) per particle
IFOREST_TREES = 100
WORKING_MEMORY_MB = 256
LOF_BLOCK = 50_000  # particles scored per LOF query
MCD_START = 500  # FastMCD's start is fitted on at most this many particles (see _robust_covariance)
MCD_C_STEPS = 30


@dataclass(frozen=True)
class OutlierResult:
    """Standardised junk scores (high = likely junk) and what the report needs to say how they were made."""

    z: np.ndarray  # (N,) the chosen method's score
    per_detector: dict[str, np.ndarray]  # detector name → (N,) standardised score, for the detectors run
    method: str
    threshold: float  # flag_outliers(z, threshold) is the suggested outlier flag
    seed: int
    contamination: float | None
    n_fit: int  # particles the detectors were fitted on (N, or the subsample size)
    n_features: int  # features used (constant columns are dropped)
    fit_index: np.ndarray  # rows the detectors were fitted on (all rows unless subsampled)
    params: dict[str, Any] = field(default_factory=dict)  # detector settings, for the report

    @property
    def flags(self) -> np.ndarray:
        return flag_outliers(self.z, self.threshold)

    def report(self) -> dict[str, Any]:
        """JSON-able summary: method, threshold, how many flagged, and how the detectors were fitted."""
        flags = self.flags
        return {
            "method": self.method,
            "detectors": list(self.per_detector),
            "threshold": float(self.threshold),
            "threshold_from": "contamination" if self.contamination is not None else "default",
            "contamination": self.contamination,
            "n_particles": int(self.z.size),
            "n_flagged": int(flags.sum()),
            "fraction_flagged": float(flags.mean()) if flags.size else 0.0,
            "n_fit": self.n_fit,
            "subsampled": self.n_fit < self.z.size,
            "n_features": self.n_features,
            "seed": self.seed,
            **self.params,
        }


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(s − median) / (1.4826 · MAD). Where more than half the scores tie (MAD = 0) the standard deviation
    stands in for the scale, and a constant score gives zeros."""
    s = np.asarray(scores, dtype=np.float64)
    centre = np.median(s)
    scale = MAD_TO_SIGMA * np.median(np.abs(s - centre))
    if not scale > 0:
        scale = float(np.std(s))
    if not scale > 0:
        return np.zeros_like(s)
    return (s - centre) / scale


def standardise_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column robust standardisation; returns the standardised (N, p') features and the indices of
    the p' columns kept (columns that are constant carry nothing and would make covariances singular)."""
    x = np.asarray(features, dtype=np.float64)
    centre = np.median(x, axis=0)
    scale = MAD_TO_SIGMA * np.median(np.abs(x - centre), axis=0)
    fallback = x.std(axis=0)
    scale = np.where(scale > 0, scale, fallback)
    keep = np.flatnonzero(scale > 0)
    return (x[:, keep] - centre[keep]) / scale[keep], keep


def flag_outliers(z: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean flag per particle: score strictly above the threshold."""
    return np.asarray(z, dtype=np.float64) > threshold


def _isolation_forest(x: np.ndarray, fit: np.ndarray, seed: int) -> np.ndarray:
    forest = IsolationForest(n_estimators=IFOREST_TREES, max_samples=min(256, fit.size), random_state=seed)
    forest.fit(x[fit])
    # score_samples is −2^(−E[h]/c(n)). Its logarithm, −E[h]/c · ln 2, is the mean isolation path length
    # (negated: short paths, junk, score high), whose inlier distribution has a lighter right tail than
    # 2^(−E[h]/c) itself: fewer false positives above z = 3 on Gaussian data.
    return np.log(-forest.score_samples(x))


def _lof(x: np.ndarray, fit: np.ndarray, rest: np.ndarray, neighbours: int) -> np.ndarray:
    k = min(neighbours, fit.size - 1)
    lof = LocalOutlierFactor(n_neighbors=k, novelty=True, algorithm="brute")
    lof.fit(x[fit])
    raw = np.empty(x.shape[0])
    raw[fit] = -lof.negative_outlier_factor_
    # In blocks: each query returns (rows, k) distances and indices, and LOF builds two more such arrays,
    # about 60 k bytes per particle, 1 GB for a million at once.
    for start in range(0, rest.size, LOF_BLOCK):
        rows = rest[start : start + LOF_BLOCK]
        raw[rows] = -lof.score_samples(x[rows])
    return np.log(raw)


def _robust_covariance(x: np.ndarray, fit: np.ndarray, seed: int) -> np.ndarray:
    """Cube root of the squared robust Mahalanobis distance per p (Wilson–Hilferty: near normal for
    Gaussian inliers).

    scikit-learn's FastMCD switches to a far slower path from about 600 points on, whatever the dimension
    (timings in benchmarks/README.md). So FastMCD runs on at most MCD_START points and gives the start;
    C-steps on every fitted particle (keep the h closest, re-estimate; each step can only shrink the
    covariance determinant, Rousseeuw & Van Driessen 1999) then bring in all the data, followed by the
    usual consistency correction and one reweighting step, as MinCovDet does itself.
    """
    rng = np.random.default_rng(seed)
    data = x[fit]
    n, p = data.shape
    start = data if n <= MCD_START else data[np.sort(rng.choice(n, MCD_START, replace=False))]
    mcd = MinCovDet(random_state=seed).fit(start)
    location, covariance = mcd.location_, mcd.covariance_
    h = (n + p + 1) // 2  # MinCovDet's default support: breakdown point of 50 %
    support: np.ndarray | None = None
    for _ in range(MCD_C_STEPS):
        d2 = _mahalanobis_sq(data, location, covariance)
        new_support = np.sort(np.argpartition(d2, h - 1)[:h])
        if support is not None and np.array_equal(new_support, support):
            break
        support = new_support
        location = data[support].mean(axis=0)
        covariance = np.cov(data[support], rowvar=False).reshape(p, p)
    d2 = _mahalanobis_sq(data, location, covariance)
    # Consistency: the h closest of normal data have a shrunk covariance; rescale so that the median d²
    # matches χ²_p's. Then reweight: the classical estimate from every point inside χ²_p's 97.5 % quantile.
    covariance = covariance * np.median(d2) / chi2.ppf(0.5, p)
    d2 = _mahalanobis_sq(data, location, covariance)
    inside = d2 <= chi2.ppf(0.975, p)
    if inside.sum() > p:
        location = data[inside].mean(axis=0)
        covariance = np.cov(data[inside], rowvar=False).reshape(p, p)
    return np.cbrt(_mahalanobis_sq(x, location, covariance) / p)


def _mahalanobis_sq(x: np.ndarray, location: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    # pinvh: a degenerate support (duplicated particles) must not make the distances blow up.
    precision = pinvh(covariance)
    centred = x - location
    return np.einsum("ij,jk,ik->i", centred, precision, centred)


def outlier_scores(
    features: np.ndarray,
    method: Method = "ensemble",
    seed: int = 0,
    contamination: float | None = None,
    *,
    max_fit: int = DEFAULT_MAX_FIT,
    lof_neighbours: int = LOF_NEIGHBOURS,
) -> OutlierResult:
    """Standardised junk scores for (N, p) per-particle features (e.g. latent means).

    ``method``: one detector (``isolation_forest``, ``lof``, ``robust_covariance``) or ``ensemble`` (all
    three, their median). ``contamination``: expected junk fraction in (0, 0.5); if given, the suggested
    threshold is the score's (1 − contamination) quantile, so that fraction is flagged; otherwise
    :data:`DEFAULT_THRESHOLD`. ``max_fit``: above this many particles the detectors are fitted on a
    random subsample of this size and score everyone (see the module docstring).
    """
    x = _checked_features(features, method, contamination, max_fit)
    n = x.shape[0]
    x, kept = standardise_features(x)
    if kept.size == 0:
        raise ValueError("every feature is constant: nothing to score")
    fit, rest = _fit_subsample(n, max_fit, seed)
    # One integer per detector from the seed, so that running one detector alone gives the same scores
    # as inside the ensemble.
    detector_seed = int(np.random.default_rng(seed).integers(2**31 - 1))

    wanted = DETECTORS if method == "ensemble" else (method,)
    if "robust_covariance" in wanted and fit.size <= 2 * kept.size:
        # Half the particles must determine a p × p covariance, with some to spare.
        raise ValueError(f"{fit.size} particles are too few for a robust covariance of {kept.size} features")
    per_detector = _detector_scores(x, fit, rest, wanted, detector_seed, lof_neighbours)

    z = robust_z(np.median(list(per_detector.values()), axis=0)) if method == "ensemble" else per_detector[method]
    threshold = DEFAULT_THRESHOLD if contamination is None else float(np.quantile(z, 1.0 - contamination))
    return OutlierResult(
        z=z,
        per_detector=per_detector,
        method=method,
        threshold=threshold,
        seed=seed,
        contamination=contamination,
        n_fit=int(fit.size),
        n_features=int(kept.size),
        fit_index=fit,
        params=_detector_params(per_detector, max_fit, lof_neighbours, fit.size),
    )


def _checked_features(features: np.ndarray, method: str, contamination: float | None, max_fit: int) -> np.ndarray:
    """The features as a finite (N, p) float array, after checking every argument of :func:`outlier_scores`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if contamination is not None and not 0.0 < contamination < 0.5:
        raise ValueError(f"contamination must be in (0, 0.5), got {contamination}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be (N, p), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    if max_fit < 10:
        raise ValueError(f"max_fit must be at least 10, got {max_fit}")
    if x.shape[0] < 10:
        raise ValueError(f"need at least 10 particles to score outliers, got {x.shape[0]}")
    return x


def _fit_subsample(n: int, max_fit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows the detectors are fitted on (all, or ``max_fit`` drawn with ``seed``) and the rest, both sorted."""
    if n > max_fit:
        fit = np.sort(np.random.default_rng(seed).choice(n, size=max_fit, replace=False))
        return fit, np.setdiff1d(np.arange(n), fit, assume_unique=True)
    return np.arange(n), np.arange(0)


def _detector_scores(x: np.ndarray, fit: np.ndarray, rest: np.ndarray, wanted: tuple[str, ...], seed: int,
                     lof_neighbours: int) -> dict[str, np.ndarray]:
    """Each wanted detector's robust z-score per particle."""
    per_detector: dict[str, np.ndarray] = {}
    # scikit-learn scores in blocks of up to working_memory MiB (1 GiB by default); smaller blocks cost
    # no measurable time and keep the peak memory of scoring a million particles modest.
    with config_context(working_memory=WORKING_MEMORY_MB):
        for name in wanted:
            if name == "isolation_forest":
                raw = _isolation_forest(x, fit, seed)
            elif name == "lof":
                raw = _lof(x, fit, rest, lof_neighbours)
            else:
                raw = _robust_covariance(x, fit, seed)
            per_detector[name] = robust_z(raw)
    return per_detector


def _detector_params(per_detector: dict[str, np.ndarray], max_fit: int, lof_neighbours: int,
                     n_fit: int) -> dict[str, Any]:
    """The detector settings the report shows."""
    params: dict[str, Any] = {"max_fit": max_fit}
    if "lof" in per_detector:
        params["lof_neighbours"] = int(min(lof_neighbours, n_fit - 1))
    if "isolation_forest" in per_detector:
        params["isolation_forest_trees"] = IFOREST_TREES
    return params
