"""The analysis stage as a composition of named stages: predict → refine per class → defocus → junk →
canonical images → columns. Each stage is its own module with explicit inputs and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.analysis.estimate.canonical import CanonicalImages, canonical_images
from relion_canon.analysis.estimate.defocus_columns import DefocusColumns, estimate_defocus
from relion_canon.analysis.estimate.junk import Junk, find_junk, outlier_features
from relion_canon.analysis.estimate.predict import predict
from relion_canon.analysis.estimate.refine import Refinement, ctf_or_none, refine_classes
from relion_canon.analysis.estimate.results import Estimates
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.context import RunContext
from relion_canon.io.star import ParticleStar


def estimate(star: ParticleStar, model_path: str | Path, out_dir: str | Path, config: EstimateConfig, *,
             context: RunContext = RunContext()) -> Estimates:
    """Apply the trained model to every particle and derive the job's estimates (see the package docstring)."""
    clock = Clock()
    prediction = predict(star, model_path, config.device, config.seed, context, clock)
    ctf = ctf_or_none(star)
    refinement = refine_classes(star, prediction.psi_deg, prediction.dataset.source, ctf, config, context, clock)
    defocus_input_A = None if ctf is None else 0.5 * (ctf.defocus_u + ctf.defocus_v)
    defocus = estimate_defocus(prediction.latent, refinement.defocus_fit_A, defocus_input_A, config.defocus_range)
    features = outlier_features(prediction.latent, refinement.score, refinement.fit_peak, refinement.defocus_fit_A,
                                defocus_input_A)
    junk = find_junk(features, config.outlier_method, config.outlier_threshold, config.seed, clock)
    canonical = canonical_images(prediction, refinement.class_averages, refinement.classes, Path(out_dir),
                                 refinement.box, refinement.pixel_size_A, config.write_canonical, context)
    report: dict[str, Any] = {
        "model": prediction.model_name, "seconds": clock.seconds, "classes": refinement.class_reports,
        "symmetry": refinement.symmetry, "defocus": defocus.report, "outliers": junk.report, **canonical.report,
    }
    return Estimates(
        columns=star_columns(refinement, defocus, junk, canonical, config.refine), report=report,
        latent=prediction.latent, psi_model=prediction.psi_deg, defocus_input=defocus_input_A,
        outlier_scores=junk.per_detector, example_index=prediction.example_index,
        example_inputs=prediction.example_inputs, example_canonical=canonical.example_canonical,
        class_averages=refinement.class_averages,
    )


def star_columns(refinement: Refinement, defocus: DefocusColumns, junk: Junk, canonical: CanonicalImages,
                 refined: bool) -> dict[str, np.ndarray]:
    """The new STAR columns in :data:`~relion_canon.analysis.estimate.results.COLUMNS` order (those the run made)."""
    columns = {
        "rlnAnglePsi": refinement.psi_deg,
        "rlnAnglePsiPrior": refinement.psi_deg,
        **defocus.columns,
        "rlnParticleSelectZScore": junk.z,
        "rlnCanonIsOutlier": junk.flag.astype(np.int64),
    }
    if refined:
        columns["rlnCanonAlignmentScore"] = refinement.score
    if canonical.column is not None:
        columns["rlnCanonCanonicalImage"] = canonical.column
    return columns
