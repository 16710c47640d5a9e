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

from relion_canon.analysis.common_lines import common_line_scores, line_consistency
from relion_canon.analysis.defocus_trend import below_typical
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.outliers import flag_outliers, outlier_scores
from relion_canon.analysis.outside_density import excess_z

log = logging.getLogger(__name__)

# Short names users type (RELION GUI, CLI) → the detectors' names in analysis.outliers.
OUTLIER_METHODS = {"iforest": "isolation_forest", "covariance": "robust_covariance"}


@dataclass
class Junk:
    """The score written as ``rlnParticleSelectZScore``, each detector's, the flag, and the report entry."""

    z: np.ndarray  # (N,) high = likely junk
    flag: np.ndarray  # (N,) bool: z above the threshold, or (with classes) in a junk class
    per_detector: dict[str, np.ndarray]
    report: dict[str, Any]

    def flag_junk_class(self, rows: np.ndarray) -> None:
        """Flag every particle of a junk class, whatever its score, and count again."""
        self.flag[rows] = True
        self.report.update(flag_counts(self.z, self.flag, float(self.report["threshold"])))


def flag_counts(z: np.ndarray, flag: np.ndarray, threshold: float) -> dict[str, Any]:
    """The report's counts of ``flag`` (what ``rlnCanonIsOutlier`` says), all from that one array: the
    particles flagged, their fraction, and how many by their score and how many only by their class.
    Counting the score's flags in one place and the junk classes' in another made ``n_flagged`` and
    ``fraction_flagged`` of one report disagree."""
    by_score = np.asarray(z, dtype=np.float64) > threshold
    flag = np.asarray(flag, dtype=bool)
    n = int(flag.size)
    return {
        "n_particles": n,
        "n_flagged": int(flag.sum()),
        "fraction_flagged": float(flag.sum() / n) if n else 0.0,
        "n_flagged_by_score": int((flag & by_score).sum()),
        "n_flagged_by_junk_class_only": int((flag & ~by_score).sum()),
    }


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
    # The score and the fit's peak each less their typical value at the particle's defocus (defocus_trend):
    # close to focus a good particle matches less well, and the detectors would take it for junk.
    columns = [-below_typical(score, defocus_input_A), radius * np.cos(angle), radius * np.sin(angle)]
    if np.all(np.isfinite(fit_peak)) and defocus_input_A is not None:
        columns += [-below_typical(fit_peak, defocus_input_A), np.abs(defocus_fit_A - defocus_input_A)]
    return np.column_stack(columns)


def find_junk(features: np.ndarray, method: str, threshold: float, seed: int, clock: Clock) -> Junk:
    """Score ``features`` with ``method`` (a user's name, see :data:`OUTLIER_METHODS`) and flag above ``threshold``."""
    clock.lap()
    result = outlier_scores(features, method=OUTLIER_METHODS.get(method, method), seed=seed)
    clock.lap("outliers")
    flag = flag_outliers(result.z, threshold)
    log.info(f"Outliers ({method}): {int(flag.sum())} of {len(flag)} particles above Z = {threshold:g}")
    # result.report() counts at the detectors' own threshold; the job's is its outlier_threshold option.
    report = {**result.report(), "threshold": threshold, "threshold_from": "outlier_threshold",
              **flag_counts(result.z, flag, threshold)}
    return Junk(z=result.z, flag=flag, per_detector=result.per_detector, report=report)


# A class whose average is this many times coarser than the typical class's (population-weighted median
# resolution), or whose particles match it less than this fraction as well as the typical class's match
# theirs, holds no consistent view: its particles agree on too little to be one.
JUNK_CLASS_RESOLUTION_FACTOR = 1.5
JUNK_CLASS_SCORE_FRACTION = 0.5
# ... or whose two half-set averages fall short of agreeing by more than this many times what a class of its
# size should (:func:`agreement_shortfall`). A class of mixed junk (noise, carbon edges, aggregates) can have
# an average sharp enough, and particles that match it well enough, to pass both tests above; its halves still
# disagree tens of times more than its size allows, while classes of one view stay within about 2.5 times
# (benchmarks/classify/README.md, "Junk classes also by their half-sets' agreement").
JUNK_CLASS_AGREEMENT_FACTOR = 5.0
# ... or, judged after those tests among the classes they pass, whose average shares no central line with the
# others' (:mod:`relion_canon.analysis.common_lines`): its median common-line score falls short of 1 by this
# many times the typical class's shortfall (and by a little in all, so that near-perfect scores' rounding
# marks nothing). Such a class holds a consistent view of another molecule (or junk that averages to a
# particle-like blob), which none of the tests above can see. The figures measured for classes of one view
# and of another molecule are in benchmarks/classify/README.md ("Classes of another molecule").
JUNK_CLASS_LINE_FACTOR = 2.5
JUNK_CLASS_LINE_GAP = 0.02
# The common-line test needs this many classes that pass the other tests, to know what typical is.
JUNK_CLASS_LINE_MIN_CLASSES = 4


# The density test flags this many robust standard deviations beyond the job's threshold. A second test at the
# threshold itself gives every good particle a second chance to cross it by noise: on the development sets it
# about doubled the good particles flagged (benchmarks/classify/README.md, "Density outside the particle").
OUTSIDE_DENSITY_MARGIN = 1.0


def junk_by_alignment_score(score: np.ndarray, threshold: float, defocus_A: np.ndarray | None = None,
                            outside_power: np.ndarray | None = None, classes: np.ndarray | None = None) -> Junk:
    """With classes, each particle's junk score is how far its correlation with its own class's average falls
    below the typical particle's at its defocus (:func:`~relion_canon.analysis.defocus_trend.score_at_defocus`),
    in robust standard deviations (median and MAD of the shortfalls): one-sided, since a particle that matches
    its class unusually well is no junk. The detectors of :func:`find_junk` score both tails of every feature,
    and with classes of different contrast the latent adds nothing to separate them.

    Given each particle's ``outside_power`` (:mod:`~relion_canon.analysis.outside_density`), a second test: a
    particle whose density outside its class's disc lies more than ``threshold`` + :data:`OUTSIDE_DENSITY_MARGIN`
    robust standard deviations above the typical particle's of its class (its label in ``classes``) at its
    defocus is junk too (an aggregate matches its class as well as a lone particle), and its score is that
    excess. Below it the second test leaves the score alone: it sees one kind of junk, and its noise would
    only blur the correlation's ranking of the rest."""
    median = float(np.median(score))
    below = below_typical(score, defocus_A)
    spread = 1.4826 * float(np.median(np.abs(below - np.median(below))))
    by_score = below / max(spread, 1e-12)
    z, how, per_detector = by_score, {"method": "alignment_score"}, {"alignment_score": by_score}
    if outside_power is not None and np.all(np.isfinite(outside_power)):
        outside = excess_z(outside_power, defocus_A, classes)
        raised = outside > np.maximum(by_score, threshold + OUTSIDE_DENSITY_MARGIN)
        z = np.where(raised, outside, by_score)
        how = {"method": "alignment_score+outside_density",
                  "n_flagged_by_outside_density": int((raised & (by_score <= threshold)).sum())}
        per_detector["outside_density"] = outside
    flag = z > threshold
    by_density = how.get("n_flagged_by_outside_density")
    log.info(f"Outliers (alignment score): {int(flag.sum())} of {len(flag)} particles above Z = {threshold:g}"
             + ("" if by_density is None else f", {by_density} of them only for density outside their class's disc"))
    report = {**how, "threshold": threshold, "threshold_from": "outlier_threshold",
              **flag_counts(z, flag, threshold),
              "median_score": median, "score_spread": spread, "by_defocus": defocus_A is not None}
    return Junk(z=z, flag=flag, per_detector=per_detector, report=report)


def junk_classes(classes: dict[int, np.ndarray], resolution_A: dict[int, float], score: np.ndarray,
                 half_agreement: dict[int, float],
                 averages: dict[int, np.ndarray] | None = None) -> tuple[dict[int, bool], dict[int, dict[str, float]]]:
    """Class number → whether it is a junk class: its average's resolution is more than
    :data:`JUNK_CLASS_RESOLUTION_FACTOR` times the typical class's, or its particles' median correlation with
    it is below :data:`JUNK_CLASS_SCORE_FRACTION` of the typical class's (both typical values the
    population-weighted medians over classes), or its half-sets agree :data:`JUNK_CLASS_AGREEMENT_FACTOR` times
    less than its size predicts; then, given the ``averages``, or its average shares no central line with the
    other classes' (:func:`line_figures`). Its particles go with it, as a RELION user drops a junk class
    after Class2D. Also class number → its common-line figures, for the report (empty without averages)."""
    numbers = sorted(classes)
    sizes = np.array([len(classes[n]) for n in numbers], dtype=float)
    resolution = np.array([resolution_A[n] for n in numbers])
    median_score = np.array([np.median(score[classes[n]]) if len(classes[n]) else 0.0 for n in numbers])
    agreement = np.array([half_agreement[n] for n in numbers])
    mask = junk_class_mask(sizes, resolution, median_score, agreement)
    figures: dict[int, dict[str, float]] = {}
    if averages is not None and all(n in averages for n in numbers):
        consistency, inconsistency, apart = line_figures(np.stack([averages[n] for n in numbers]), sizes,
                                                         ~mask & (sizes > 0))
        figures = {n: {"common_line_score": round(float(c), 4), "common_line_shortfall": round(float(f), 3)}
                   for n, c, f in zip(numbers, consistency, inconsistency) if np.isfinite(c) and np.isfinite(f)}
        if apart.any():
            log.info("Junk classes sharing no central line with the other classes (another molecule?): %s",
                     ", ".join(str(n) for n, a in zip(numbers, apart) if a))
        mask = mask | apart
    marked = dict(zip(numbers, (bool(j) for j in mask)))
    if any(marked.values()):
        log.info("Junk classes (averages coarser than %.1f x the typical, matched less than %.1f x as well as "
                 "the typical class, half-sets agreeing %.0f x less than their size predicts, or no common "
                 "lines with the others): %s", JUNK_CLASS_RESOLUTION_FACTOR, JUNK_CLASS_SCORE_FRACTION,
                 JUNK_CLASS_AGREEMENT_FACTOR, ", ".join(str(n) for n, junk in marked.items() if junk))
    return marked, figures


def classes_apart(averages: np.ndarray, sizes: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """(K,) bool: which ``judged`` classes of (K, B, B) ``averages`` share no central line with the others
    (:func:`line_figures`)."""
    return line_figures(averages, sizes, judged)[2]


def line_figures(averages: np.ndarray, sizes: np.ndarray,
                 judged: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`line_inconsistency` of the non-empty classes of (K, B, B) ``averages`` (empty classes take no
    part: NaN figures, never apart); nothing is scored with fewer than :data:`JUNK_CLASS_LINE_MIN_CLASSES`
    judged classes."""
    sizes, judged = np.asarray(sizes, dtype=float), np.asarray(judged, dtype=bool)
    k = len(sizes)
    consistency, shortfall, apart = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=bool)
    present = np.flatnonzero(sizes > 0)
    if judged[present].sum() >= JUNK_CLASS_LINE_MIN_CLASSES:
        scores = common_line_scores(np.asarray(averages)[present])
        consistency[present], shortfall[present], apart[present] = line_inconsistency(
            scores, sizes[present], judged[present])
    return consistency, shortfall, apart


def line_inconsistency(scores: np.ndarray, sizes: np.ndarray,
                       judged: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From the (K, K) common-line scores of K classes, of (K,) ``sizes``, each class's median score with the
    ``judged`` classes (:func:`~relion_canon.analysis.common_lines.line_consistency`), its shortfall (1 −
    score) over the typical judged class's (population-weighted median), and (K,) bool: which judged classes
    fall short :data:`JUNK_CLASS_LINE_FACTOR` times as much and by :data:`JUNK_CLASS_LINE_GAP` in all. With
    fewer than :data:`JUNK_CLASS_LINE_MIN_CLASSES` judged classes nothing is marked."""
    judged = np.asarray(judged, dtype=bool)
    consistency = line_consistency(scores, judged)
    if judged.sum() < JUNK_CLASS_LINE_MIN_CLASSES:
        return consistency, np.full(len(judged), np.nan), np.zeros(len(judged), dtype=bool)
    typical = _weighted_median(consistency[judged], np.asarray(sizes, dtype=float)[judged])
    shortfall = (1.0 - consistency) / max(1.0 - typical, 1e-6)
    apart = judged & (shortfall >= JUNK_CLASS_LINE_FACTOR) & (typical - consistency >= JUNK_CLASS_LINE_GAP)
    return consistency, shortfall, apart


def junk_class_mask(sizes: np.ndarray, resolution_A: np.ndarray, median_score: np.ndarray,
                    half_agreement: np.ndarray) -> np.ndarray:
    """(K,) bool: :func:`junk_classes`' rule on classes given by their (K,) sizes, resolutions (Å), their
    particles' median correlation with their average, and their half-set averages' agreement."""
    sizes = np.asarray(sizes, dtype=float)
    typical_resolution = _weighted_median(resolution_A, sizes)
    typical_score = _weighted_median(median_score, sizes)
    return (np.asarray(resolution_A) > JUNK_CLASS_RESOLUTION_FACTOR * typical_resolution) | \
        (np.asarray(median_score) < JUNK_CLASS_SCORE_FRACTION * typical_score) | \
        (agreement_shortfall(sizes, half_agreement) > JUNK_CLASS_AGREEMENT_FACTOR)


def agreement_shortfall(sizes: np.ndarray, half_agreement: np.ndarray) -> np.ndarray:
    """(K,) how many times more each class's half-set averages fall short of agreeing (1 − a) than a class of
    its size should. Two noisy copies of one image correlate as a = S/(1 + S), S their signal-to-noise ratio,
    and S grows with the particles averaged: from the typical class's S per particle (the population-weighted
    median over classes), a class of n particles should fall short by 1/(1 + S·n)."""
    sizes = np.asarray(sizes, dtype=float)
    agreement = np.clip(np.asarray(half_agreement, dtype=float), 0.0, 1.0 - 1e-9)
    snr = agreement / (1.0 - agreement)
    occupied = sizes > 0
    if not occupied.any():
        return np.zeros(len(sizes))
    per_particle = _weighted_median(snr[occupied] / sizes[occupied], sizes[occupied])
    return (1.0 - agreement) * (1.0 + per_particle * sizes)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    position = np.searchsorted(np.cumsum(weights[order]), 0.5 * weights.sum())
    return float(values[order][min(position, len(values) - 1)])
