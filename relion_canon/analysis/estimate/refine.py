"""Stage 2: per class, refine every angle against the learnt canonical image, fit each particle's defocus to
it, look for symmetry, and express the angles in the class's own frame.

Refinement works on the particles at the working box (the network may have seen them smaller), neither
phase-flipped nor masked: it multiplies each particle by its own CTF itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from relion_canon.analysis.alignment import Alignment, AlignmentConfig, align_particles
from relion_canon.analysis.ctf_fit import fit_defocus
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.analysis.metrics import align_angles
from relion_canon.analysis.outside_density import outside_power_of, particle_radius_px
from relion_canon.geometry import wrap_deg
from relion_canon.analysis.symmetry import detect_symmetry
from relion_canon.context import RunContext
from relion_canon.ctf import CtfParams
from relion_canon.io.star import ParticleStar
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train.data import ParticleBatches

log = logging.getLogger(__name__)

NO_SYMMETRY = {"n": 1, "confidence": 0.0}
ALIGN_BATCH = 512


@dataclass
class ClassAlignment:
    """One class refined: angles and scores of its rows, its reference, and its defocus fit (NaN without CTF)."""

    psi_deg: np.ndarray
    score: np.ndarray
    shift_px: np.ndarray  # (n, 2) (x, y) at the working box: the particle's centre is box//2 + shift
    reference: np.ndarray  # (box, box) the class's canonical average
    defocus_fit_A: np.ndarray
    fit_peak: np.ndarray
    report: dict[str, Any]  # "alignment" (history) and "symmetry"
    outside_power: np.ndarray  # (n,) analysis.outside_density.outside_power about the class's disc, or NaN


@dataclass
class Refinement:
    """Every particle's angle after refinement (or the network's, without), in STAR order; NaN where a
    quantity was not measured (no refinement, no CTF)."""

    psi_deg: np.ndarray
    score: np.ndarray
    defocus_fit_A: np.ndarray
    fit_peak: np.ndarray
    classes: dict[int, np.ndarray]  # class number (0: all) → its rows
    class_reports: dict[str, dict[str, Any]]  # str(class number) → n_particles, alignment, symmetry, frame
    class_averages: dict[int, np.ndarray] = field(default_factory=dict)  # only with refinement
    box: int = 0  # the working box, px
    pixel_size_A: float = 0.0  # median pixel size at the working box
    classification: dict[str, Any] | None = None  # when the job classified: classes found, convergence, rounds
    # (N, 2) Å, RELION's rlnOriginX/YAngst (the particle's centre sits at box//2 − origin), where a
    # translational search found them; None without one
    origin_A: np.ndarray | None = None
    # (N,) analysis.outside_density.outside_power about each particle's class disc; None where not measured
    # (only the classifier's junk test reads it)
    outside_power: np.ndarray | None = None

    @property
    def symmetry(self) -> dict[str, Any]:
        """The symmetry report of the first class (all particles when not per class)."""
        return self.class_reports[str(next(iter(self.classes)))].get("symmetry", dict(NO_SYMMETRY))


def ctf_or_none(star: ParticleStar) -> CtfParams | None:
    """The particles' CTFs, or None for particles without CTF parameters (compared as they are)."""
    if "rlnDefocusU" not in star.particles.columns:
        return None
    return star.ctf_params()


def class_groups(star: ParticleStar, per_class: bool) -> dict[int, np.ndarray]:
    """Rows per rlnClassNumber when asked (and present), else every row as class 0."""
    n = len(star)
    if not per_class or "rlnClassNumber" not in star.particles.columns:
        return {0: np.arange(n)}
    numbers = star.particles["rlnClassNumber"].to_numpy()
    return {int(c): np.flatnonzero(numbers == c) for c in np.unique(numbers)}


def refine_classes(star: ParticleStar, psi_model_deg: np.ndarray, source: Any, ctf: CtfParams | None,
                   config: EstimateConfig, context: RunContext, clock: Clock) -> Refinement:
    """Refine (when ``config.refine``) and frame each class; ``source`` is the particles' image source."""
    images = ParticleBatches(star, PreprocessConfig(box=config.box), source=source)
    n = len(psi_model_deg)
    result = Refinement(psi_deg=psi_model_deg.copy(), score=np.full(n, np.nan), defocus_fit_A=np.full(n, np.nan),
                        fit_peak=np.full(n, np.nan), classes=class_groups(star, config.per_class), class_reports={},
                        box=images.box, pixel_size_A=float(np.median(images.pixel_size)))
    for number, rows in result.classes.items():
        info: dict[str, Any] = {"n_particles": int(len(rows))}
        if config.refine:
            aligned = align_class(images, rows, number, None if ctf is None else ctf.take(rows),
                                  psi_model_deg[rows], config, context, clock)
            result.psi_deg[rows], result.score[rows] = aligned.psi_deg, aligned.score
            result.defocus_fit_A[rows], result.fit_peak[rows] = aligned.defocus_fit_A, aligned.fit_peak
            result.class_averages[number] = aligned.reference
            if config.max_shift_px > 0:
                if result.origin_A is None:
                    result.origin_A = np.zeros((n, 2))
                result.origin_A[rows] = origin_A(aligned.shift_px, images.pixel_size[rows])
            info.update(aligned.report)
        if config.per_class and number != 0 and "rlnAnglePsi" in star.particles.columns:
            given = star.particles["rlnAnglePsi"].to_numpy(np.float64)[rows]
            result.psi_deg[rows], info["frame"] = in_class_frame(
                result.psi_deg[rows], given, result.score[rows] if config.refine else None)
        result.class_reports[str(number)] = info
    return result


def align_class(images: ParticleBatches, rows: np.ndarray, number: int, ctf: CtfParams | None,
                initial_psi_deg: np.ndarray, config: EstimateConfig, context: RunContext,
                clock: Clock) -> ClassAlignment:
    """Alignment against the class's learnt reference, the defocus fit to it, and its symmetry."""
    log.info(f"Refining in-plane angles against the learnt canonical image"
             f"{'' if number == 0 else f' of class {number}'} ({len(rows)} particles)")
    batches = batches_of(images, rows)
    clock.lap()
    alignment = align_particles(
        batches, len(rows), ctf, images.pixel_size[rows], images.box, initial_psi_deg,
        AlignmentConfig(max_shift=config.max_shift_px, seed=config.seed), context=context,
    )
    clock.lap("refine")
    return finish_class(images, rows, number, alignment, ctf, clock)


def finish_class(images: ParticleBatches, rows: np.ndarray, number: int, alignment: Alignment,
                 ctf: CtfParams | None, clock: Clock, outside: bool = False) -> ClassAlignment:
    """A class once aligned: each particle's defocus fitted to the class's reference, and its symmetry; with
    ``outside``, each particle's density outside the class's disc (NaN without: only the classifier's junk
    test reads it)."""
    batches = batches_of(images, rows)
    defocus_fit_A, fit_peak = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    if ctf is not None:
        defocus_fit_A, fit_peak = fit_defocus(batches, alignment, ctf, images.pixel_size[rows], images.box)
        clock.lap("defocus_fit")
    power = np.full(len(rows), np.nan)
    if outside:
        pixel_size_A = float(np.median(images.pixel_size[rows]))
        power = outside_power_of(batches, len(rows), np.asarray(alignment.shift, dtype=np.float64),
                                 particle_radius_px(alignment.reference, pixel_size_A), pixel_size_A)
        clock.lap("outside_density")
    symmetry = detect_symmetry(alignment.reference, radius=int(0.9 * images.box / 2))
    if symmetry.n > 1:
        log.info(f"Class {number}: the canonical image looks C{symmetry.n}-symmetric (confidence "
                 f"{symmetry.confidence:.2f}): psi is determined only modulo {360 / symmetry.n:g}°")
    return ClassAlignment(psi_deg=alignment.psi, score=alignment.score, shift_px=alignment.shift,
                          reference=alignment.reference,
                          defocus_fit_A=defocus_fit_A, fit_peak=fit_peak,
                          report={"alignment": alignment.history, "symmetry": symmetry.report()},
                          outside_power=power)


def origin_A(shift_px: np.ndarray, pixel_size_A: np.ndarray) -> np.ndarray:
    """(n, 2) RELION origins in Å of particles whose centres sit ``shift_px`` (n, 2) px from box//2 at a box of
    ``pixel_size_A`` (n,) Å/px: RELION moves content by −origin."""
    return -np.asarray(shift_px, dtype=np.float64) * np.asarray(pixel_size_A, dtype=np.float64)[:, None]


def in_class_frame(psi_deg: np.ndarray, given_psi_deg: np.ndarray,
                   score: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    """The class's angles in RELION's own frame for that class (so the priors agree with it), and the
    transform for the report. With alignment ``score``s the transform is fitted on the particles that match
    the reference best: junk has arbitrary angles in both frames and would pull a least-squares offset by
    degrees."""
    good = score >= np.median(score) if score is not None else np.ones(len(psi_deg), bool)
    fit = align_angles(psi_deg[good], given_psi_deg[good])
    framed = wrap_deg(fit.sign * psi_deg - fit.offset)
    return framed, {"offset_deg": fit.offset, "sign": fit.sign, "rmse_vs_input_deg": fit.rmse}


def batches_of(images: ParticleBatches, rows: np.ndarray,
             size: int = ALIGN_BATCH) -> Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]]:
    """A re-startable iterator over ``rows`` as (positions within rows, preprocessed images); given sorted
    positions ``which``, over just those (see :data:`~relion_canon.analysis.prepared_particles.ImageBatches`)."""

    def generate(which: np.ndarray | None = None):
        positions = np.arange(len(rows)) if which is None else np.asarray(which)
        for start in range(0, len(positions), size):
            pos = positions[start:start + size]
            yield pos, images[rows[pos]]["image"][:, 0].numpy()

    return generate
