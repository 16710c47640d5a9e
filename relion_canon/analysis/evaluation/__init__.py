"""How good a job's answers are: against simulation ground truth, or against a RELION reference run.

The metrics are those of ``benchmarks.md`` (both papers), computed once here for the ``evaluate`` command, the
benchmarks and the tests:

* **In-plane angle** (paper B, eq. 8): per-particle error after one global offset Δ and sign ± (fitted by
  :func:`~relion_canon.analysis.metrics.align_angles`), wrapped to [−180°, 180°); rMSE and median |error|,
  and the rMSE weighted by w = exp(def̂ in µm) − 1 (the job's ``rlnParticleFigureOfMerit``) in the same
  frame. With a C_n symmetry the error is taken modulo 360°/n.
* **Defocus**: rMSE in µm of the job's ``rlnCanonDefocus`` against the true mean defocus (simulation) or the
  STAR's CTFFIND defocus (RELION reference).
* **Outliers**: ROC AUC (scikit-learn) of the job's ``rlnParticleSelectZScore`` against the ground-truth junk
  labels, or against RELION's ``rlnParticleSelectZScore`` > 2 (paper B's protocol); precision and recall of
  the job's own flags (``rlnCanonIsOutlier``, i.e. at the job's threshold).
* **Canonical image error** (paper A, Table 1): per-image MSE between the job's canonical image and the
  clean, unrotated ground-truth image, mean and worst, after removing the learned frame's global rotation
  and mirror (see :func:`fit_canonical_frame` for the fit and :data:`NORMALISATION` for the intensity scale).

With ground-truth junk labels, angle, defocus and canonical metrics use the non-junk particles only (a junk
pick has no true in-plane angle, and its "clean image" is not the molecule); the result says so.

Modules: :mod:`.metrics` (the metrics on arrays and their dataclasses), :mod:`.result` (:class:`Evaluation`,
its JSON and markdown), :mod:`.frame` (the canonical frame fit and image MSE), :mod:`.matching` (reading a job
and joining its rows to a reference's), :mod:`.canonical_images` (the canonical metric on a job's files) and
:mod:`.evaluate_job` (:func:`evaluate`, the whole evaluation).
"""

from relion_canon.analysis.evaluation.evaluate_job import RELION_Z_THRESHOLD, evaluate
from relion_canon.analysis.evaluation.frame import (
    NORMALISATION,
    canonical_errors,
    fit_canonical_frame,
    normalise_in_mask,
    to_truth_frame,
)
from relion_canon.analysis.evaluation.matching import load_job, match_rows
from relion_canon.analysis.evaluation.metrics import (
    AngleMetrics,
    CanonicalMetrics,
    DefocusMetrics,
    OutlierMetrics,
    angle_metrics,
    defocus_metrics,
    outlier_metrics,
    plain_json,
)
from relion_canon.analysis.evaluation.result import Evaluation

__all__ = [
    "NORMALISATION",
    "RELION_Z_THRESHOLD",
    "AngleMetrics",
    "CanonicalMetrics",
    "DefocusMetrics",
    "Evaluation",
    "OutlierMetrics",
    "angle_metrics",
    "canonical_errors",
    "defocus_metrics",
    "evaluate",
    "fit_canonical_frame",
    "load_job",
    "match_rows",
    "normalise_in_mask",
    "outlier_metrics",
    "plain_json",
    "to_truth_frame",
]
