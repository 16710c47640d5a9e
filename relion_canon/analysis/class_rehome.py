"""A second chance for the particles of junk classes, once a classification has settled: the good particles
among them (far off-centre, or caught by a blurred class) join the good class they match; the others are
scored against the good classes."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from relion_canon.analysis.alignment import SearchGrid, ShiftSearch
from relion_canon.analysis.alignment_reference import ClassAverage
from relion_canon.analysis.class_comparison import half_agreement
from relion_canon.analysis.class_search import ClassSearch, ClassState, averages_of, sums_of, supported_band
from relion_canon.analysis.defocus_trend import score_at_defocus
from relion_canon.analysis.prepared_particles import PreparedParticles
from relion_canon.geometry import resolution_at_threshold_A

log = logging.getLogger(__name__)

# A particle of a junk class joins a good class when it matches it at least this fraction as well as the
# class's typical (median) particle does. Above the fraction below which a whole class counts as junk (0.5):
# the re-homing search is global (every turn and shift), and the best of that many poses lifts a junk
# particle's score more than a search about its centre would.
REHOME_SCORE_FRACTION = 0.7

JunkRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(sizes (K,), resolutions Å (K,), median scores (K,), half-set agreements (K,)) → (K,) bool: which classes
hold junk."""

ApartRule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(averages (K, B, B), sizes (K,), judged (K,) bool) → (K,) bool: which of the judged classes are views of
nothing the other classes show (another molecule), judged on their averages together."""


def _class_figures(state: ClassState, averages: list[ClassAverage], pixel_size_A: float, box: int,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a :data:`JunkRule` judges, each (K,): the classes' sizes and median scores over the particles
    ``rows`` (default all; the rounds may run on a subset), their averages' resolutions (Å) and half-set
    agreements."""
    classes, score = state.classes.numpy(), state.poses.score.numpy()
    if rows is not None:
        classes, score = classes[rows], score[rows]
    counts = np.bincount(classes, minlength=len(averages))
    median = np.array([np.median(score[classes == c]) if counts[c] else 0.0 for c in range(len(averages))])
    resolution = np.array([resolution_at_threshold_A(a.frc, pixel_size_A, box) for a in averages])
    agreement = half_agreement(torch.stack([a.halves for a in averages])).numpy()
    return counts, resolution, median, agreement


def _judged(junk_rule: JunkRule, counts: np.ndarray, resolution: np.ndarray, median: np.ndarray,
            agreement: np.ndarray) -> np.ndarray:
    return np.asarray(junk_rule(counts, resolution, median, agreement), dtype=bool) & (counts > 0)


def junk_classes_now(state: ClassState, averages: list[ClassAverage], junk_rule: JunkRule, pixel_size_A: float,
                     box: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(K,) bool: the non-empty classes of ``state`` (with their ``averages``) that ``junk_rule`` calls junk,
    judged on the particles ``rows`` (default all)."""
    return _judged(junk_rule, *_class_figures(state, averages, pixel_size_A, box, rows))


def rehome(state: ClassState, particles: PreparedParticles, junk_rule: JunkRule, searcher: ClassSearch,
           shifts: ShiftSearch, grid: SearchGrid, pixel_size_A: float,
           apart_rule: ApartRule | None = None, defocus_A: np.ndarray | None = None) -> ClassState:
    """Give the particles of junk classes (``junk_rule``, then ``apart_rule`` among the classes that pass
    it) a second chance: each is searched against the good
    classes alone, globally first (a particle far off-centre lands in a junk class because the turn found
    about its centre was wrong; see :meth:`ClassSearch.search_globally`), and joins the best one when it
    matches it at least :data:`REHOME_SCORE_FRACTION` as well as that class's typical particle does at the
    particle's own defocus (``defocus_A``, :func:`~relion_canon.analysis.defocus_trend.score_at_defocus`): a
    good particle that a blurred class had caught. The others stay, with their correlation with the best good
    class as their score, so that a junk particle's outlier score says how unlike every view it is, not how
    well it fits other junk."""
    averages = averages_of(state.sums, grid)
    classes = state.classes.numpy()
    counts, resolution, median, agreement = _class_figures(state, averages, pixel_size_A, grid.box)
    junk = _judged(junk_rule, counts, resolution, median, agreement)
    apart = np.zeros_like(junk)
    if apart_rule is not None:
        judged = ~junk & (counts > 0)
        apart = np.asarray(apart_rule(torch.stack([a.reference for a in averages]).numpy(), counts, judged),
                           dtype=bool) & judged
        junk |= apart
    if not junk.any() or junk[counts > 0].all():
        return state
    good = torch.from_numpy(np.flatnonzero(~junk & (counts > 0)))
    references = torch.stack([averages[c].reference for c in good.tolist()])
    band = supported_band([averages[c] for c in good.tolist()])
    in_junk = torch.from_numpy(junk[classes])
    start = state.poses
    if shifts.max_px > 0:
        start = searcher.search_globally(particles.some(in_junk), state.poses, references, shifts, band, in_junk)[0]
    # Only the junk classes' particles are searched: the others keep their class and pose.
    searched = searcher.search(particles.some(in_junk), replace(state, poses=start), references, True, shifts, band)
    best = torch.where(in_junk, good[torch.where(in_junk, searched.classes, 0)], state.classes)
    # Scored where each particle ended up: the search scores it about the global search's coarse centre.
    searched.poses = searcher.scored_in_place(particles.some(in_junk), ClassState(searched.poses, best, state.sums))
    at_defocus = torch.from_numpy(score_at_defocus(state.poses.score.numpy(), defocus_A)).float()
    fits = searched.poses.score >= REHOME_SCORE_FRACTION * torch.from_numpy(median).float()[best] * at_defocus
    move = in_junk & fits
    poses, new_classes = state.poses.copy(), state.classes.clone()
    poses.psi_rad[move], poses.shift_px[move] = searched.poses.psi_rad[move], searched.poses.shift_px[move]
    poses.score[in_junk] = searched.poses.score[in_junk]
    new_classes[move] = best[move]
    log.info("classification: %d of the %d particles of %d junk class(es) (%d of them sharing no common line "
             "with the other classes) match a good class and join it",
             int(move.sum()), int(in_junk.sum()), int(junk.sum()), int(apart.sum()))
    return ClassState(poses, new_classes, sums_of(particles.everyone(), poses, new_classes, len(averages), grid))

