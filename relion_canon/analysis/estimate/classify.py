"""Stage 2, as a 2-D classifier (the default): classes of one view each, found without labels
(:mod:`relion_canon.analysis.classification`); then per class the defocus fit to its own average and its
symmetry, as :mod:`~relion_canon.analysis.estimate.refine` does for given classes. Each class's angles are in
its own average's frame, as after RELION's Class2D.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relion_canon.analysis.alignment import AlignmentConfig
from relion_canon.analysis.class_result import Classification
from relion_canon.analysis.classification import ClassificationConfig, classify_particles
from relion_canon.analysis.estimate.refine import Refinement, batches_of, finish_class, origin_A
from relion_canon.analysis.estimate.junk import classes_apart, junk_class_mask
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.context import RunContext
from relion_canon.ctf import CtfParams
from relion_canon.io.star import ParticleStar
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train.data import ParticleBatches

log = logging.getLogger(__name__)


def classify_classes(star: ParticleStar, psi_model_deg: np.ndarray, source: Any, ctf: CtfParams | None,
                     config: EstimateConfig, context: RunContext, clock: Clock) -> Refinement:
    """Classify every particle, then fit defocus and look for symmetry per class; class numbers from 1,
    largest class first. ``source`` is the particles' image source."""
    images = ParticleBatches(star, PreprocessConfig(box=config.box), source=source)
    n = len(psi_model_deg)
    clock.lap()
    found = classify_particles(
        batches_of(images, np.arange(n)), n, ctf, images.pixel_size, images.box, psi_model_deg,
        ClassificationConfig(n_classes=config.classes, seed=config.seed,
                             alignment=AlignmentConfig(max_shift=config.max_shift_px, seed=config.seed)),
        junk_rule=junk_class_mask, apart_rule=classes_apart, context=context,
    )
    clock.lap("refine")
    result = Refinement(psi_deg=found.psi_deg.copy(), score=found.score.copy(), defocus_fit_A=np.full(n, np.nan),
                        fit_peak=np.full(n, np.nan), classes={}, class_reports={}, box=images.box,
                        pixel_size_A=float(np.median(images.pixel_size)), outside_power=np.full(n, np.nan))
    if config.max_shift_px > 0:
        result.origin_A = origin_A(found.shift_px, images.pixel_size)
    for c in range(found.n_classes):
        rows, alignment = found.alignment_of(c)
        finished = finish_class(images, rows, c + 1, alignment, None if ctf is None else ctf.take(rows), clock,
                                outside=True)
        result.defocus_fit_A[rows], result.fit_peak[rows] = finished.defocus_fit_A, finished.fit_peak
        result.outside_power[rows] = finished.outside_power
        result.classes[c + 1] = rows
        result.class_averages[c + 1] = alignment.reference
        result.class_reports[str(c + 1)] = {**class_facts(found, c), "symmetry": finished.report["symmetry"]}
    result.classification = classification_report(found)
    return result


def class_facts(found: Classification, c: int) -> dict[str, Any]:
    members = int((found.class_index == c).sum())
    return {"n_particles": members, "fraction": members / len(found.class_index),
            "resolution_A": float(found.resolution_A[c]), "half_agreement": float(found.half_agreement[c])}


def classification_report(found: Classification) -> dict[str, Any]:
    if not found.converged:
        log.warning("The classification stopped before it converged: see report.json (classification.history)")
    return {"n_classes": found.n_classes, "converged": found.converged, "history": found.history,
            "splits": found.splits}
