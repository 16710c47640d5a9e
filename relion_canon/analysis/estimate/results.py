"""What the analysis stage hands back: the new STAR columns and everything the report and figures need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLUMNS = (
    "rlnClassNumber",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnAngleRotPrior",
    "rlnAngleTiltPrior",
    "rlnAnglePsiPrior",
    "rlnCanonClassPsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnCanonDefocus",
    "rlnCanonDefocusLatent",
    "rlnParticleFigureOfMerit",
    "rlnParticleSelectZScore",
    "rlnCanonIsOutlier",
    "rlnCanonAlignmentScore",
    "rlnCanonCanonicalImage",
)

# Written only with a reference map (``ref``): the 3-D orientation of each particle (relion_canon.analysis.orientation).
REFERENCE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnCanonClassPsi")


@dataclass
class Estimates:
    """Everything the analysis stage found, for the STAR writer, the report and the figures."""

    columns: dict[str, np.ndarray]  # the new STAR columns above, in STAR order
    report: dict[str, Any]  # JSON-able facts: outlier method and threshold, symmetry, defocus mapping, frames
    latent: np.ndarray  # (N, L) model latent (means), in STAR order
    psi_model: np.ndarray  # (N,) degrees: the network's own angle, before any refinement
    defocus_input: np.ndarray | None  # (N,) Å: mean of the STAR's rlnDefocusU/V, where it has them
    outlier_scores: dict[str, np.ndarray]  # detector name → (N,) standardised score (high = junk)
    example_index: np.ndarray  # (K,) rows shown in the image grids
    example_inputs: np.ndarray  # (K, H, W) preprocessed inputs of those rows
    example_canonical: np.ndarray  # (K, H, W) their canonical (unrotated, denoised) images (see the column)
    class_averages: dict[int, np.ndarray] = field(default_factory=dict)  # class number (0: all) → (H, W) canonical average
    # With a reference map: class number → (class average, its matched projection), for the figure
    matched_projections: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
