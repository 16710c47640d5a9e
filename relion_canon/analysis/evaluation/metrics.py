"""The evaluation's metrics on arrays (in-plane angle, defocus, outliers: defined in the package docstring of
:mod:`relion_canon.analysis.evaluation`) and the dataclasses that hold them, the canonical image error's
included. Each dataclass's ``to_dict`` gives its JSON-able scalars; the arrays stay for the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from relion_canon.analysis.metrics import AngleAlignment, align_angles
from relion_canon.geometry import wrap_deg


def _scalars(obj: Any) -> dict[str, Any]:
    """A dataclass's JSON-able fields; arrays (kept for the figures) are left out."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray) or f.metadata.get("figure_only"):
            continue
        out[f.name] = plain_json(value)
    return out


def plain_json(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as Python numbers/lists and NaN/inf as None, ready for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass
class AngleMetrics:
    """In-plane angle error after one global offset and sign (paper B, eq. 8)."""

    n: int
    rmse_deg: float
    median_deg: float  # median |error|
    weighted_rmse_deg: float | None  # with w = exp(def̂ µm) − 1, in the same global frame; None without weights
    offset_deg: float  # sign·predicted ≈ truth + offset
    sign: int
    symmetry: int  # C_n: errors are taken modulo 360°/n
    true_deg: np.ndarray = field(repr=False)
    errors_deg: np.ndarray = field(repr=False)

    @property
    def aligned_deg(self) -> np.ndarray:
        """The predictions in the reference's frame (offset and sign removed), for plotting against truth."""
        return wrap_deg(self.true_deg + self.errors_deg)

    def to_dict(self) -> dict[str, Any]:
        return _scalars(self)


@dataclass
class DefocusMetrics:
    n: int
    rmse_um: float
    mean_error_um: float  # estimated − reference: a bias the rMSE hides
    reference: str  # what the defocus was compared with
    true_um: np.ndarray = field(repr=False)
    predicted_um: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return _scalars(self)


@dataclass
class OutlierMetrics:
    n: int
    n_positive: int
    label_source: str
    auc: dict[str, float | None]  # detector → ROC AUC (None when the labels have one class only)
    method: str | None  # the job's detector (report.json)
    threshold: float | None  # the job's threshold on its Z-score (report.json)
    n_flagged: int | None
    precision: float | None  # of the job's flags; None when nothing is flagged or there are no flags
    recall: float | None
    recall_by_kind: dict[str, float]  # junk kind → fraction flagged (simulation only)
    labels: np.ndarray = field(repr=False)
    scores: dict[str, np.ndarray] = field(repr=False, metadata={"figure_only": True})

    def to_dict(self) -> dict[str, Any]:
        return _scalars(self)


@dataclass
class CanonicalMetrics:
    """Paper A's Table 1: MSE between the job's canonical images and the clean unrotated truth."""

    n: int
    mean_mse: float
    worst_mse: float
    worst_row: int  # 1-based row of the job's STAR
    rotation_deg: float  # job canonical = mirror?(truth turned counter-clockwise by this), see to_truth_frame
    mirrored: bool  # the job's frame is a mirror image of the truth's
    box: int
    normalisation: str
    mse: np.ndarray = field(repr=False)
    frames: int = 1  # frames fitted: one per job class when the job has several (rotation_deg: the largest's)
    # For the figures: (K, H, W) images in the truth's frame, with the job's 1-based STAR rows and MSEs.
    examples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata={"figure_only": True})
    example_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    worst: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata={"figure_only": True})
    worst_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    worst_mses: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # of worst_rows

    def to_dict(self) -> dict[str, Any]:
        # The worst cases by row, so that a user can look them up in the STAR file.
        return {**_scalars(self), "worst_cases": [{"row": int(r), "mse": float(m)}
                                                   for r, m in zip(self.worst_rows, self.worst_mses)]}


def angle_metrics(
    predicted_deg: np.ndarray, true_deg: np.ndarray, weights: np.ndarray | None = None, symmetry: int = 1
) -> AngleMetrics:
    """Paper B's eq. 8 on (N,) angles in degrees; ``weights`` (e.g. w = exp(def̂) − 1, negatives count as 0)
    give the weighted rMSE in the same global frame. ``symmetry`` n compares angles modulo 360°/n (a C_n
    particle's angle is only defined up to that)."""
    if symmetry < 1:
        raise ValueError(f"symmetry order must be >= 1, got {symmetry}")
    pred = np.asarray(predicted_deg, dtype=np.float64)
    true = np.asarray(true_deg, dtype=np.float64)
    # Multiplying by n maps the C_n ambiguity 360°/n onto a full turn, where align_angles' wrap handles it.
    fit: AngleAlignment = align_angles(symmetry * pred, symmetry * true)
    errors = fit.errors / symmetry
    weighted = None
    if weights is not None:
        w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
        if np.isfinite(w).all() and w.sum() > 0:
            weighted = float(np.sqrt(np.sum(w * errors**2) / np.sum(w)))
    return AngleMetrics(
        n=int(pred.size),
        rmse_deg=float(np.sqrt(np.mean(errors**2))),
        median_deg=float(np.median(np.abs(errors))),
        weighted_rmse_deg=weighted,
        offset_deg=float(wrap_deg(fit.offset) / symmetry),
        sign=fit.sign,
        symmetry=int(symmetry),
        true_deg=wrap_deg(true),
        errors_deg=errors,
    )


def defocus_metrics(predicted_angstrom: np.ndarray, true_angstrom: np.ndarray, reference: str) -> DefocusMetrics:
    """rMSE in µm between (N,) defocus values given in Å (RELION's unit)."""
    pred = np.asarray(predicted_angstrom, dtype=np.float64) / 1e4
    true = np.asarray(true_angstrom, dtype=np.float64) / 1e4
    err = pred - true
    return DefocusMetrics(
        n=int(err.size),
        rmse_um=float(np.sqrt(np.mean(err**2))),
        mean_error_um=float(np.mean(err)),
        reference=reference,
        true_um=true,
        predicted_um=pred,
    )


def outlier_metrics(
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    label_source: str,
    flags: np.ndarray | None = None,
    threshold: float | None = None,
    method: str | None = None,
    kinds: np.ndarray | None = None,
) -> OutlierMetrics:
    """ROC AUC of each detector's score (high = outlier) against boolean ``labels``; precision and recall of
    ``flags`` (the job's decisions); with ``kinds`` (junk kind per particle, "none" for good ones) the
    fraction of each junk kind that was flagged. The first detector in ``scores`` is the job's."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=bool)
    auc: dict[str, float | None] = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        ok = np.isfinite(s)
        two_classes = y[ok].any() and not y[ok].all()
        auc[name] = float(roc_auc_score(y[ok], s[ok])) if two_classes else None
    precision = recall = None
    n_flagged = None
    by_kind: dict[str, float] = {}
    if flags is not None:
        f = np.asarray(flags, dtype=bool)
        n_flagged = int(f.sum())
        tp = int((f & y).sum())
        precision = tp / n_flagged if n_flagged else None
        recall = tp / int(y.sum()) if y.any() else None
        if kinds is not None:
            k = np.asarray(kinds).astype(str)
            for kind in sorted(set(k[y])):
                sel = k == kind
                by_kind[kind] = float(f[sel].mean())
    return OutlierMetrics(
        n=int(y.size), n_positive=int(y.sum()), label_source=label_source, auc=auc, method=method,
        threshold=threshold, n_flagged=n_flagged, precision=precision, recall=recall, recall_by_kind=by_kind,
        labels=y, scores={k: np.asarray(v, dtype=np.float64) for k, v in scores.items()},
    )
