"""The analysis stage as a composition of named stages: predict → refine per class → defocus → junk →
canonical images → columns. Each stage is its own module with explicit inputs and outputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relion_canon.analysis.estimate.classify import classify_classes
from relion_canon.analysis.estimate.canonical import CanonicalImages, PerParticle, canonical_images
from relion_canon.analysis.estimate.defocus_columns import DefocusColumns, estimate_defocus
from relion_canon.analysis.estimate.junk import Junk, find_junk, junk_by_alignment_score, junk_classes, outlier_features
from relion_canon.analysis.estimate.predict import predict
from relion_canon.analysis.estimate.refine import Refinement, batches_of, ctf_or_none, refine_classes
from relion_canon.analysis.estimate.results import COLUMNS, Estimates
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.context import RunContext
from relion_canon.io.star import ParticleStar
from relion_canon.parallel import is_writer
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train.data import ParticleBatches

if TYPE_CHECKING:
    from relion_canon.analysis.orientation import Orientations

log = logging.getLogger(__name__)


def estimate(star: ParticleStar, model_path: str | Path, out_dir: str | Path, config: EstimateConfig, *,
             context: RunContext = RunContext()) -> Estimates | None:
    """Apply the trained model to every particle and derive the job's estimates (see the package docstring).
    Under torchrun the passes over the particles are shared (:mod:`relion_canon.parallel`); the rest reads only
    their joined results and is rank 0's: the other processes return None after the passes."""
    clock = Clock()
    prediction = predict(star, model_path, config.device, config.seed, context, clock)
    ctf = ctf_or_none(star)
    if config.refine and not config.per_class and config.classes != 1:
        refinement = classify_classes(star, prediction.psi_deg, prediction.dataset.source, ctf, config, context, clock)
    else:
        refinement = refine_classes(star, prediction.psi_deg, prediction.dataset.source, ctf, config, context, clock)
    if not is_writer():
        return None
    defocus_input_A = None if ctf is None else 0.5 * (ctf.defocus_u + ctf.defocus_v)
    defocus = estimate_defocus(prediction.latent, refinement.defocus_fit_A, defocus_input_A, config.defocus_range)
    features = outlier_features(prediction.latent, refinement.score, refinement.fit_peak, refinement.defocus_fit_A,
                                defocus_input_A)
    junk = judge_junk(refinement, features, defocus_input_A, config, clock)
    per_particle = per_particle_canonical(star, refinement, junk, config)  # the in-class origins, before 3-D
    orientations = None
    if config.ref:
        from relion_canon.analysis.orientation import ParticleImages, orient_classes  # only when a map is given

        clock.lap()
        particle_images = ParticleBatches(star, PreprocessConfig(box=config.box), source=prediction.dataset.source)
        orientations = orient_classes(config.ref, config.ref_pixel_size, config.sym, refinement.class_averages,
                                      refinement.class_reports, refinement.classes, refinement.psi_deg,
                                      refinement.origin_A, refinement.box, refinement.pixel_size_A,
                                      particle_junk=junk.flag, context=context,
                                      images=ParticleImages(batches_of(particle_images, np.arange(len(star))), ctf,
                                                            particle_images.pixel_size))
        clock.lap("orientation")
        refinement.origin_A = orientations.particles.origin_A
    clock.lap()
    canonical = canonical_images(prediction, refinement.class_averages, refinement.classes, Path(out_dir),
                                 refinement.box, refinement.pixel_size_A,
                                 config.write_canonical or config.canonical_from == "network", context,
                                 per_particle)
    clock.lap("canonical_images")
    report: dict[str, Any] = {
        "model": prediction.model_name, "seconds": clock.seconds, "classes": refinement.class_reports,
        "symmetry": refinement.symmetry, "defocus": defocus.report, "outliers": junk.report, **canonical.report,
    }
    if refinement.classification is not None:
        report["classification"] = refinement.classification
    if orientations is not None:
        report["orientation"] = orientations.report
    return Estimates(
        columns=star_columns(refinement, defocus, junk, canonical, config.refine, orientations), report=report,
        latent=prediction.latent, psi_model=prediction.psi_deg, defocus_input=defocus_input_A,
        outlier_scores=junk.per_detector, example_index=prediction.example_index,
        example_inputs=prediction.example_inputs, example_canonical=canonical.example_canonical,
        class_averages=refinement.class_averages,
        matched_projections={} if orientations is None else orientations.matched,
    )


def judge_junk(refinement: Refinement, features: np.ndarray, defocus_input_A: np.ndarray | None,
               config: EstimateConfig, clock: Clock) -> Junk:
    """Without classes, the detectors on ``features``; with them, each particle by its alignment score and the
    density outside its class's disc, and then every particle of a junk class."""
    if refinement.classification is None:
        return find_junk(features, config.outlier_method, config.outlier_threshold, config.seed, clock)
    junk = junk_by_alignment_score(refinement.score, config.outlier_threshold, defocus_input_A,
                                   refinement.outside_power, class_numbers(refinement.classes, len(refinement.score)))
    mark_junk_classes(refinement, junk)
    return junk


def per_particle_canonical(star: ParticleStar, refinement: Refinement, junk: Junk,
                           config: EstimateConfig) -> PerParticle | None:
    """What the per-particle canonical decoder learns from, when asked for (``canonical_from="network"``) and
    refinement made class averages (without refinement the job's own network gives each particle's image)."""
    if not refinement.class_averages or config.canonical_from != "network":
        return None
    origin_A = None if refinement.origin_A is None else refinement.origin_A.copy()
    return PerParticle(star, refinement.psi_deg.copy(), origin_A, ~junk.flag.astype(bool), config.device, config.seed)


def star_columns(refinement: Refinement, defocus: DefocusColumns, junk: Junk, canonical: CanonicalImages,
                 refined: bool, orientations: Orientations | None = None) -> dict[str, np.ndarray]:
    """The new STAR columns in :data:`~relion_canon.analysis.estimate.results.COLUMNS` order (those the run made).
    With ``orientations`` (a reference map) the angles are 3-D: see :mod:`relion_canon.analysis.orientation.priors`."""
    columns: dict[str, np.ndarray] = {}
    if refinement.classification is not None:
        columns["rlnClassNumber"] = class_numbers(refinement.classes, len(refinement.psi_deg))
    angles = ({"rlnAnglePsi": refinement.psi_deg, "rlnAnglePsiPrior": refinement.psi_deg} if orientations is None
              else orientations.particles.columns())
    columns |= {
        **{label: angles[label] for label in COLUMNS if label in angles},
        **({} if refinement.origin_A is None else
           {"rlnOriginXAngst": refinement.origin_A[:, 0], "rlnOriginYAngst": refinement.origin_A[:, 1]}),
        **defocus.columns,
        "rlnParticleSelectZScore": junk.z,
        "rlnCanonIsOutlier": junk.flag.astype(np.int64),
    }
    if refined:
        columns["rlnCanonAlignmentScore"] = refinement.score
    if canonical.column is not None:
        columns["rlnCanonCanonicalImage"] = canonical.column
    return columns


def class_numbers(classes: dict[int, np.ndarray], n: int) -> np.ndarray:
    """(N,) each particle's class number."""
    numbers = np.zeros(n, dtype=np.int64)
    for number, rows in classes.items():
        numbers[rows] = number
    return numbers


def mark_junk_classes(refinement: Refinement, junk: Junk) -> None:
    """Flag every particle of a junk class (see :func:`~relion_canon.analysis.estimate.junk.junk_classes`),
    and record which classes are junk and how many views the others show."""
    reports = {n: refinement.class_reports[str(n)] for n in refinement.classes}
    marked, lines = junk_classes(refinement.classes, {n: r["resolution_A"] for n, r in reports.items()},
                                 refinement.score, {n: r["half_agreement"] for n, r in reports.items()},
                                 refinement.class_averages or None)
    for number, is_junk in marked.items():
        refinement.class_reports[str(number)].update(lines.get(number, {}), is_junk=is_junk)
        if is_junk:
            junk.flag_junk_class(refinement.classes[number])
    facts = refinement.classification if refinement.classification is not None else {}
    facts["n_junk_classes"] = sum(marked.values())
    facts["n_views_found"] = len(marked) - sum(marked.values())
    if any(marked.values()):
        log.info(f"Outliers: {junk.report['n_flagged']} of {len(junk.flag)} particles flagged, "
                 f"{junk.report['n_flagged_by_junk_class_only']} of them only for being in a junk class")
