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
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import minimize_scalar

from relion_canon.analysis.metrics import AngleAlignment, align_angles, wrap_degrees
from relion_canon.errors import InputError
from relion_canon.io.imagename import parse_image_name
from relion_canon.io.star import ParticleStar, read_star

JOB_STAR = "particles.star"
JOB_REPORT = "report.json"
JOB_CANONICAL_STACK = "canonical.mrcs"
GROUND_TRUTH_STAR = "ground_truth.star"
CANONICAL_COLUMN = "rlnCanonCanonicalImage"
CLEAN_COLUMN = "rlnCanonCleanImageName"
ZSCORE = "rlnParticleSelectZScore"

RELION_Z_THRESHOLD = 2.0  # paper B: a particle whose RELION Z-score is above 2 is an outlier

NORMALISATION = (
    "each image normalised to zero mean and unit variance inside a circular mask of radius box/2 − 1 px, "
    "MSE = mean squared difference over the mask pixels (= 2·(1 − Pearson r): 0 identical, 2 uncorrelated)"
)

_CHUNK = 512  # images read at a time: memory stays flat however many particles are evaluated
_REFINE_IMAGES = 256  # image pairs used to refine the canonical frame's rotation below the polar grid's 1°


# --- results -----------------------------------------------------------------------------------------------------
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
        return wrap_degrees(self.true_deg + self.errors_deg)

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
    # For the figures: (K, H, W) images in the truth's frame, with the job's 1-based STAR rows and MSEs.
    examples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata={"figure_only": True})
    example_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    worst: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata={"figure_only": True})
    worst_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    def to_dict(self) -> dict[str, Any]:
        # The worst cases by row, so that a user can look them up in the STAR file.
        worst = np.sort(self.mse)[::-1][: len(self.worst_rows)]
        return {**_scalars(self), "worst_cases": [{"row": int(r), "mse": float(m)}
                                                   for r, m in zip(self.worst_rows, worst)]}


@dataclass
class Evaluation:
    """A job's answers scored against a reference; :meth:`to_markdown` and :meth:`to_dict` report it."""

    job: str
    reference: str
    n_particles: int  # in the job's STAR
    n_evaluated: int  # in the angle/defocus/canonical subset
    subset: str  # which particles the angle/defocus/canonical metrics use
    angle: AngleMetrics | None
    defocus: DefocusMetrics | None
    outliers: OutlierMetrics | None
    canonical: CanonicalMetrics | None
    peer: dict[str, AngleMetrics] = field(default_factory=dict)  # other methods' angles, same truth and subset
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "reference": self.reference,
            "n_particles": self.n_particles,
            "n_evaluated": self.n_evaluated,
            "subset": self.subset,
            "angle": self.angle.to_dict() if self.angle else None,
            "defocus": self.defocus.to_dict() if self.defocus else None,
            "outliers": self.outliers.to_dict() if self.outliers else None,
            "canonical": self.canonical.to_dict() if self.canonical else None,
            "peer": {name: m.to_dict() for name, m in self.peer.items()},
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """One table (a column per method) and the notes that qualify it."""
        peers = list(self.peer)
        header = ["metric", "relion_canon", *peers]
        rows: list[list[str]] = []

        def add(metric: str, ours: Any, others: list[Any] | None = None) -> None:
            rows.append([metric, _fmt(ours), *[_fmt(v) for v in (others or [None] * len(peers))]])

        def angle_rows(a: AngleMetrics | None, others: list[AngleMetrics]) -> None:
            n_fold = 1 if self.angle is None else self.angle.symmetry
            unit = "°" if n_fold == 1 else f"°, mod {360 / n_fold:g}°"
            add(f"psi rMSE ({unit})", a.rmse_deg if a else None, [p.rmse_deg for p in others])
            add("psi median \\|error\\| (°)", a.median_deg if a else None, [p.median_deg for p in others])
            add("psi weighted rMSE, w = exp(def̂) − 1 (°)", a.weighted_rmse_deg if a else None,
                [p.weighted_rmse_deg for p in others])
            add("psi global offset (°) / sign", f"{a.offset_deg:.2f} / {a.sign:+d}" if a else None,
                [f"{p.offset_deg:.2f} / {p.sign:+d}" for p in others])
            add("particles (angle)", a.n if a else None, [p.n for p in others])

        angle_rows(self.angle, [self.peer[p] for p in peers])
        d = self.defocus
        add("defocus rMSE (µm)", d.rmse_um if d else None)
        add("defocus mean error (µm)", d.mean_error_um if d else None)
        o = self.outliers
        if o is not None:
            ours = next(iter(o.auc.values()), None)
            add("outlier ROC AUC", ours, [o.auc.get(p) for p in peers])
            add(f"outlier precision @ threshold {_fmt(o.threshold)}", o.precision)
            add(f"outlier recall @ threshold {_fmt(o.threshold)}", o.recall)
            for kind, value in o.recall_by_kind.items():
                add(f"recall, junk kind {kind}", value)
            add("outlier labels (positive / all)", f"{o.n_positive} / {o.n}")
        else:
            add("outlier ROC AUC", None)
        c = self.canonical
        add("canonical MSE, mean", c.mean_mse if c else None)
        add("canonical MSE, worst", f"{c.worst_mse:.4g} (row {c.worst_row})" if c else None)
        if c:
            add("canonical frame rotation (°) / mirrored", f"{c.rotation_deg:.2f} / {'yes' if c.mirrored else 'no'}")

        lines = [
            f"## Evaluation of {self.job}",
            "",
            f"Reference: {self.reference}. Angle, defocus and canonical metrics on {self.subset} "
            f"({self.n_evaluated} of {self.n_particles} particles).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        notes = list(self.notes)
        if c:
            notes.append(f"Canonical MSE: {c.normalisation}.")
        if notes:
            lines += ["", "Notes:", *[f"- {n}" for n in notes]]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


# --- single metrics on arrays ----------------------------------------------------------------------------------
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
        offset_deg=float(wrap_degrees(fit.offset) / symmetry),
        sign=fit.sign,
        symmetry=int(symmetry),
        true_deg=wrap_degrees(true),
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


# --- canonical images ----------------------------------------------------------------------------------------------
def _mask(box: int) -> np.ndarray:
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    return np.hypot(x, y) <= box / 2 - 1


def normalise_in_mask(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float64 images with zero mean and unit variance inside the evaluation mask, 0 outside
    (a constant image becomes all zeros, i.e. MSE 1 against any normalised image)."""
    x = np.asarray(images, dtype=np.float64)
    m = _mask(x.shape[-1])
    inside = x[:, m]
    inside = inside - inside.mean(axis=1, keepdims=True)
    std = inside.std(axis=1, keepdims=True)
    inside = np.divide(inside, std, out=np.zeros_like(inside), where=std > 0)
    out = np.zeros_like(x)
    out[:, m] = inside
    return out


def _mirror(images: np.ndarray) -> np.ndarray:
    """Left-right mirror about column box//2 (RELION's rotation centre), so that mirroring and rotating
    about that pixel commute as they should."""
    box = images.shape[-1]
    return images[..., (2 * (box // 2) - np.arange(box)) % box]


def _rotate(images: np.ndarray, angle_deg: float) -> np.ndarray:
    from relion_canon.simulate.junk import rotate_images

    # Cubic splines: bilinear interpolation blurs enough to show as a few % of MSE on small boxes.
    return rotate_images(np.asarray(images, dtype=np.float64), np.full(len(images), angle_deg), order=3)


def to_truth_frame(canonical: np.ndarray, rotation_deg: float, mirrored: bool) -> np.ndarray:
    """The job's canonical images put in the truth's frame: mirror (if the frame is mirrored), then turn
    back by the fitted rotation (the inverse of job = mirror?(R_rotation(truth)))."""
    x = _mirror(np.asarray(canonical)) if mirrored else np.asarray(canonical)
    return _rotate(x, -rotation_deg)


def _polar(images: np.ndarray, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, R, T) samples on rings of radius 1 … box/2 − 1 px about pixel box//2, and the ring radii."""
    box = images.shape[-1]
    c = box // 2
    radii = np.arange(1, int(box / 2 - 1) + 1, dtype=np.float64)
    theta = np.arange(n_angles) * (2 * np.pi / n_angles)
    rows = c + radii[:, None] * np.sin(theta)[None]
    cols = c + radii[:, None] * np.cos(theta)[None]
    out = np.stack([ndimage.map_coordinates(img, [rows, cols], order=1) for img in images])
    return out, radii


class _FrameFit:
    """Accumulates, chunk by chunk, the rotational cross-correlation of the job's canonical images (plain
    and mirrored) with the truth, summed over all pairs: the fit sees the whole set at constant memory.

    On rings, a counter-clockwise turn by α (row 0 at the top) moves what sat at polar angle θ + α to θ, so
    if job = R_α(truth) the ring profiles satisfy job(θ) = truth(θ + α): the peak of
    Σ_θ job(θ)·truth(θ + α), an FFT correlation along θ weighted by the ring radius (area), gives α.
    """

    def __init__(self, n_angles: int = 360):
        self.n_angles = n_angles
        self.spectra = {False: np.zeros(n_angles // 2 + 1, complex), True: np.zeros(n_angles // 2 + 1, complex)}

    def add(self, canonical: np.ndarray, truth: np.ndarray) -> None:
        t_polar, radii = _polar(normalise_in_mask(truth), self.n_angles)
        f_truth = np.fft.rfft(t_polar, axis=-1)
        job = normalise_in_mask(canonical)
        for mirrored in (False, True):
            j_polar, _ = _polar(_mirror(job) if mirrored else job, self.n_angles)
            cross = np.conj(np.fft.rfft(j_polar, axis=-1)) * f_truth
            self.spectra[mirrored] += np.einsum("nrt,r->t", cross, radii)

    def peaks(self) -> dict[bool, tuple[float, float]]:
        """mirrored → (correlation peak, rotation in degrees)."""
        out = {}
        for mirrored, spectrum in self.spectra.items():
            corr = np.fft.irfft(spectrum, n=self.n_angles)
            k = int(np.argmax(corr))
            out[mirrored] = (float(corr[k]), float(wrap_degrees(k * 360.0 / self.n_angles)))
        return out


def _refine(canonical: np.ndarray, truth: np.ndarray, start_deg: float, mirrored: bool) -> tuple[float, float]:
    """The rotation near ``start_deg`` (± one polar step) that minimises the mean MSE, and that MSE.
    ``start_deg`` is the rotation of the (mirrored) job images relative to the truth."""
    target = normalise_in_mask(truth)
    source = _mirror(canonical) if mirrored else np.asarray(canonical)

    def mean_mse(angle: float) -> float:
        return float(np.mean(_mse(normalise_in_mask(_rotate(source, -angle)), target)))

    res = minimize_scalar(mean_mse, bounds=(start_deg - 1.5, start_deg + 1.5), method="bounded",
                          options={"xatol": 0.01})
    return float(wrap_degrees(res.x)), float(res.fun)


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = _mask(a.shape[-1])
    return np.mean((a[:, m] - b[:, m]) ** 2, axis=1)


def canonical_errors(canonical: np.ndarray, truth: np.ndarray, rotation_deg: float, mirrored: bool) -> np.ndarray:
    """(N,) per-image MSE (see :data:`NORMALISATION`) of the job's canonical images, put in the truth's frame
    with the given global rotation and mirror, against the clean truth images."""
    return _mse(normalise_in_mask(to_truth_frame(canonical, rotation_deg, mirrored)), normalise_in_mask(truth))


def fit_canonical_frame(canonical: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """The one global rotation (degrees) and mirror of the job's canonical frame relative to the truth's,
    fitted on all (N, H, W) pairs: job ≈ mirror?(R_rotation(truth)). See :func:`to_truth_frame`.

    The rotation is found on a 1° grid by a polar cross-correlation summed over every pair, for the plain and
    the mirrored job images, then refined to 0.01° by minimising the mean MSE on up to 256 pairs; the mirror
    hypothesis with the lower MSE wins."""
    fit = _FrameFit()
    for start in range(0, len(canonical), _CHUNK):
        fit.add(canonical[start : start + _CHUNK], truth[start : start + _CHUNK])
    sub = _spread(len(canonical), _REFINE_IMAGES)
    return _best_frame(fit, canonical[sub], truth[sub])


def _best_frame(fit: _FrameFit, canonical: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    # A mirror hypothesis whose correlation peak is close to the best one is refined too: for a nearly
    # mirror-symmetric view the peaks are close and only the MSE after refinement tells them apart.
    peaks = fit.peaks()
    top = max(peak for peak, _ in peaks.values())
    best: tuple[float, float, bool] | None = None
    for mirrored, (peak, start) in peaks.items():
        if peak < top - 0.1 * abs(top):
            continue
        # Refinement works on the plain job images, whose relation to the truth is mirror-then-rotate.
        angle, err = _refine(canonical, truth, start, mirrored)
        if best is None or err < best[1]:
            best = (angle, err, mirrored)
    assert best is not None
    return best[0], best[2]


def _spread(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else np.zeros(0, int)


# --- reading a job and its references ------------------------------------------------------------------------------
def load_job(path: str | Path) -> tuple[ParticleStar, dict[str, Any]]:
    """A job's ``particles.star`` (from its folder, or any STAR it wrote) and its ``report.json`` ({} if none)."""
    path = Path(path)
    if path.is_dir():
        if not (path / JOB_STAR).is_file():
            raise InputError(f"no {JOB_STAR} in the job folder (not a relion_canon output?)", path)
        path = path / JOB_STAR
    star = read_star(path)
    if "rlnAnglePsi" not in star.particles.columns:
        raise InputError("no rlnAnglePsi column: not a relion_canon output", path)
    report: dict[str, Any] = {}
    report_path = path.parent / JOB_REPORT
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot parse report.json ({exc})", report_path) from exc
    return star, report


def load_truth(path: str | Path) -> ParticleStar:
    """A simulation's ground truth, from its folder or its ``ground_truth.star``."""
    from relion_canon.simulate import read_ground_truth

    path = Path(path)
    star_path = path / GROUND_TRUTH_STAR if path.is_dir() else path
    table = read_ground_truth(star_path)  # checks it is one
    star = read_star(star_path)
    return star.with_particles(table)


def _name_key(name: str) -> tuple[int, str]:
    """(image index, stack file name): the same particle although the folder is spelled differently (a set
    moved, or a job run from another working directory)."""
    ref = parse_image_name(name)
    return ref.index, os.path.basename(ref.path)


def match_rows(job: ParticleStar, reference: ParticleStar, notes: list[str] | None = None) -> np.ndarray:
    """For each row of ``job``, the 0-based row of the same particle in ``reference``.

    Joined on ``rlnImageName``, then on (image number, stack file name), and when the names do not match
    but both files have the same number of rows, on row order (said in ``notes``). Raises
    :class:`InputError` naming the first job particle that cannot be found.
    """
    job_names = job.image_names
    ref_names = reference.image_names
    for key in (str, _name_key):
        try:
            ref_keys = [key(n) for n in ref_names]
            job_keys = [key(n) for n in job_names]
        except InputError:
            continue
        lookup = {k: i for i, k in enumerate(ref_keys)}
        if len(lookup) != len(ref_keys):  # duplicate names: this key cannot identify a particle
            continue
        idx = [lookup.get(k, -1) for k in job_keys]
        if min(idx, default=0) >= 0:
            if key is _name_key and notes is not None:
                notes.append(f"Stack folders differ between {job.path} and {reference.path}: particles joined on "
                             "image number and stack file name.")
            return np.asarray(idx, dtype=np.int64)
    if len(job_names) == len(ref_names):
        if notes is not None:
            notes.append(f"Image names differ between {job.path} and {reference.path}: particles joined on row order.")
        return np.arange(len(job_names))
    ref_set = set(ref_names)
    missing = next(i for i, n in enumerate(job_names) if n not in ref_set)
    raise InputError(
        f"particle {job_names[missing]} is not in {reference.path} ({len(job_names)} particles here, "
        f"{len(ref_names)} there, names do not match, so rows cannot be joined)",
        job.path,
        missing + 1,
    )


def _numeric(star: ParticleStar, column: str) -> np.ndarray | None:
    if column not in star.particles.columns:
        return None
    values = pd.to_numeric(star.particles[column], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f"{column} is not a number", star.path, int(bad[0]) + 1)
    return values


def _mean_defocus(star: ParticleStar) -> np.ndarray | None:
    u, v = _numeric(star, "rlnDefocusU"), _numeric(star, "rlnDefocusV")
    if u is None:
        return None
    return (u + (v if v is not None else u)) / 2


# --- the whole evaluation ------------------------------------------------------------------------------------------
def evaluate(
    job: str | Path,
    truth: str | Path | None = None,
    relion: str | Path | None = None,
    *,
    symmetry: int | None = None,
    project_dir: str | Path | None = None,
    relion_z_threshold: float = RELION_Z_THRESHOLD,
    n_examples: int = 8,
    n_worst: int = 4,
) -> Evaluation:
    """Score a job's output (its folder or a ``particles.star`` it wrote) against a simulation's ground truth
    (its folder or ``ground_truth.star``) and/or a RELION reference STAR (e.g. Class2D ``run_it020_data.star``).

    With ``truth`` the truth is the reference for every metric, and a ``relion`` STAR is scored beside the
    job as a peer (its psi, and its Z-score as a detector). With ``relion`` alone it is the reference: its
    ``rlnAnglePsi`` for angles, its (else the job STAR's) CTFFIND ``rlnDefocusU/V`` for defocus, its
    ``rlnParticleSelectZScore`` > ``relion_z_threshold`` as outlier labels. ``project_dir`` resolves image
    names (default: the working directory, then each STAR file's folder). ``symmetry`` n compares angles
    modulo 360°/n; by default the C_n the job detected (``report.json`` "symmetry": {"n": …}), else 1.
    """
    if truth is None and relion is None:
        raise InputError("nothing to evaluate against: give a simulation ground truth or a RELION reference STAR", job)
    job_star, report = load_job(job)
    notes: list[str] = []
    n = len(job_star)
    truth_star = load_truth(truth) if truth is not None else None
    truth_idx = match_rows(job_star, truth_star, notes) if truth_star is not None else None
    relion_star = read_star(relion) if relion is not None else None
    relion_idx = match_rows(job_star, relion_star, notes) if relion_star is not None else None

    psi = _numeric(job_star, "rlnAnglePsi")
    weights = _numeric(job_star, "rlnParticleFigureOfMerit")
    est_defocus = _numeric(job_star, "rlnCanonDefocus")
    if weights is None and est_defocus is not None:
        weights = np.exp(est_defocus / 1e4) - 1.0
    detected = (report.get("symmetry") or {}).get("n") if isinstance(report.get("symmetry"), dict) else None
    if symmetry is None:
        symmetry = int(detected) if isinstance(detected, int) and detected >= 1 else 1
        if symmetry > 1:
            notes.append(f"The job detected C{symmetry} symmetry (report.json): angles compared modulo "
                         f"{360 / symmetry:g}° (give symmetry 1 to compare them on the full circle).")
    elif isinstance(detected, int) and detected != symmetry:
        notes.append(f"Angles compared with C{symmetry} symmetry as asked, although the job detected C{detected}.")

    subset = np.ones(n, bool)
    kinds = None
    if truth_star is not None:
        t = truth_star.particles.iloc[truth_idx].reset_index(drop=True)
        junk = t["rlnCanonIsJunk"].to_numpy(int).astype(bool)
        kinds = t["rlnCanonJunkKind"].astype(str).to_numpy()
        subset = ~junk
        subset_text = "non-junk particles (ground-truth labels)"
        reference = f"simulation ground truth {truth_star.path}"
        ref_psi = t["rlnAnglePsi"].to_numpy(np.float64)
        views = t.loc[subset, "rlnCanonViewId"].nunique() if "rlnCanonViewId" in t.columns else 1
        if views > 1:
            notes.append(f"The truth has {views} views; one global offset and sign is fitted across them.")
    else:
        subset_text = "all particles"
        reference = f"RELION reference {relion_star.path}"
        r = relion_star.particles.iloc[relion_idx].reset_index(drop=True)
        if "rlnAnglePsi" not in r.columns:
            raise InputError("RELION reference has no rlnAnglePsi column", relion_star.path)
        ref_psi = pd.to_numeric(r["rlnAnglePsi"], errors="coerce").to_numpy(np.float64)
        if "rlnClassNumber" in r.columns and r["rlnClassNumber"].nunique() > 1:
            notes.append(f"The reference has {r['rlnClassNumber'].nunique()} classes, each with its own in-plane "
                         "frame; one global offset is fitted across them (evaluate one class for paper B's protocol).")
    if not subset.any():
        raise InputError("no particle to evaluate angles on (every particle is junk in the truth)", job_star.path)
    rows = np.flatnonzero(subset & np.isfinite(ref_psi))
    if rows.size == 0:
        source = relion_star.path if truth_star is None else truth_star.path
        raise InputError("no reference angle for any particle to evaluate", source)

    angle = angle_metrics(psi[rows], ref_psi[rows], None if weights is None else weights[rows], symmetry)

    peer: dict[str, AngleMetrics] = {}
    if truth_star is not None and relion_star is not None:
        r = relion_star.particles.iloc[relion_idx].reset_index(drop=True)
        if "rlnAnglePsi" not in r.columns:
            notes.append(f"{relion_star.path} has no rlnAnglePsi: RELION's angles not scored.")
        else:
            rel_psi = pd.to_numeric(r["rlnAnglePsi"], errors="coerce").to_numpy(np.float64)
            ok = rows[np.isfinite(rel_psi[rows])]
            if ok.size:
                peer[_relion_name(relion_star)] = angle_metrics(rel_psi[ok], ref_psi[ok], None, symmetry)

    defocus = _defocus(job_star, est_defocus, truth_star, truth_idx, relion_star, relion_idx, rows, notes)
    outliers = _outliers(job_star, report, truth_star, truth_idx, relion_star, relion_idx, kinds,
                         relion_z_threshold, notes)
    canonical = None
    if truth_star is not None:
        canonical = _canonical(job_star, truth_star, truth_idx, rows, project_dir, n_examples, n_worst, notes)
    else:
        notes.append("No ground-truth images with a RELION reference: no canonical metric.")
    return Evaluation(
        job=str(job_star.path), reference=reference, n_particles=n, n_evaluated=int(rows.size), subset=subset_text,
        angle=angle, defocus=defocus, outliers=outliers, canonical=canonical, peer=peer, notes=notes,
    )


def _relion_name(star: ParticleStar) -> str:
    return f"RELION ({star.path.name})"


def _defocus(
    job_star, est_defocus, truth_star, truth_idx, relion_star, relion_idx, rows, notes
) -> DefocusMetrics | None:
    if est_defocus is None:
        notes.append("The job's STAR has no rlnCanonDefocus: no defocus metric.")
        return None
    if truth_star is not None:
        true = _mean_defocus(truth_star)
        if true is None or not np.any(true[truth_idx][rows] > 0):
            notes.append("The simulation has no CTF (no defocus): no defocus metric.")
            return None
        return defocus_metrics(est_defocus[rows], true[truth_idx][rows], "ground truth mean defocus")
    ref = _mean_defocus(relion_star)
    source = f"CTFFIND defocus in {relion_star.path.name}"
    if ref is not None:
        ref = ref[relion_idx]
    else:
        ref = _mean_defocus(job_star)
        source = f"CTFFIND defocus in {job_star.path.name} (the reference has none)"
    if ref is None:
        notes.append("Neither STAR has rlnDefocusU/V: no defocus metric.")
        return None
    return defocus_metrics(est_defocus[rows], ref[rows], source)


def _outliers(job_star, report, truth_star, truth_idx, relion_star, relion_idx, kinds, z_threshold, notes):
    score = _numeric(job_star, ZSCORE)
    if score is None:
        notes.append(f"The job's STAR has no {ZSCORE}: no outlier metrics.")
        return None
    info = report.get("outliers") or {}
    method = info.get("method")
    threshold = info.get("threshold")
    flags = _numeric(job_star, "rlnCanonIsOutlier")
    if flags is None and threshold is not None:
        flags = score > float(threshold)
    name = f"relion_canon ({method})" if method else "relion_canon"
    scores = {name: score}
    relion_z = None
    if relion_star is not None and ZSCORE in relion_star.particles.columns:
        relion_z = _numeric(relion_star, ZSCORE)[relion_idx]
    if truth_star is not None:
        labels = truth_star.particles["rlnCanonIsJunk"].to_numpy(int)[truth_idx].astype(bool)
        source = "ground-truth junk labels"
        if relion_z is not None:
            scores[_relion_name(relion_star)] = relion_z
    else:
        if relion_z is None:
            notes.append(f"The RELION reference has no {ZSCORE}: no outlier labels, no outlier metrics.")
            return None
        labels = relion_z > z_threshold
        source = f"RELION {ZSCORE} > {z_threshold:g} (paper B's protocol)"
    metrics = outlier_metrics(labels, scores, source, flags, None if threshold is None else float(threshold), method,
                              kinds)
    if metrics.auc.get(name) is None:
        notes.append("The outlier labels have one class only: no ROC AUC.")
    return metrics


def _sources(job_star: ParticleStar, truth_star: ParticleStar, project_dir, notes: list[str]):
    """(job canonical images, truth clean images, job input images or None), each in the given STAR's order."""
    from relion_canon.io.source import ParticleSource

    def source_for(star: ParticleStar, column: str) -> ParticleSource:
        table = pd.DataFrame({"rlnImageName": star.particles[column].astype(str)})
        return ParticleSource.from_star(star.with_particles(table), project_dir)

    if CANONICAL_COLUMN in job_star.particles.columns:
        canonical = source_for(job_star, CANONICAL_COLUMN)
    else:
        stack = job_star.path.parent / JOB_CANONICAL_STACK
        if not stack.is_file():
            return None
        canonical = ParticleSource.from_stack(stack)
        if len(canonical) != len(job_star):
            raise InputError(f"{len(canonical)} canonical images for {len(job_star)} particles in {job_star.path} "
                             f"and no {CANONICAL_COLUMN} column to match them", stack)
        notes.append(f"No {CANONICAL_COLUMN} column: canonical images taken from {stack} in STAR order.")
    if CLEAN_COLUMN not in truth_star.particles.columns:
        raise InputError(f"the ground truth has no {CLEAN_COLUMN} column (clean images)", truth_star.path)
    clean = source_for(truth_star, CLEAN_COLUMN)
    try:
        inputs = ParticleSource.from_star(job_star, project_dir)
    except InputError as exc:
        notes.append(f"Input images not shown ({exc}).")
        inputs = None
    return canonical, clean, inputs


def _canonical(
    job_star, truth_star, truth_idx, rows, project_dir, n_examples, n_worst, notes
) -> CanonicalMetrics | None:
    from relion_canon.preprocess.fourier import fourier_resample

    sources = _sources(job_star, truth_star, project_dir, notes)
    if sources is None:
        notes.append("The job wrote no canonical images (run it with write_canonical): no canonical metric.")
        return None
    canonical_src, clean_src, input_src = sources
    box = canonical_src.box
    if clean_src.box != box:
        notes.append(f"Truth images ({clean_src.box} px) Fourier-resampled to the job's canonical box ({box} px).")

    def pairs(sel: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for start in range(0, len(sel), _CHUNK):
            chunk = sel[start : start + _CHUNK]
            truth = clean_src.read(truth_idx[chunk])
            if truth.shape[-1] != box:
                truth = fourier_resample(truth, box)
            yield chunk, canonical_src.read(chunk), truth

    fit = _FrameFit()
    for _, canon, truth in pairs(rows):
        fit.add(canon, truth)
    sub = rows[_spread(rows.size, _REFINE_IMAGES)]
    _, canon_sub, truth_sub = next(pairs(sub))
    rotation, mirrored = _best_frame(fit, canon_sub, truth_sub)
    mse = np.concatenate([canonical_errors(c, t, rotation, mirrored) for _, c, t in pairs(rows)])

    def images(sel: np.ndarray) -> dict[str, np.ndarray]:
        _, canon, truth = next(pairs(sel))
        out = {"canonical": to_truth_frame(canon, rotation, mirrored), "truth": truth}
        if input_src is not None:
            out = {"input": input_src.read(sel), **out}
        return out

    worst_order = np.argsort(mse)[::-1][: max(n_worst, 1)]
    example_sel = rows[_spread(rows.size, n_examples)]
    worst_sel = rows[worst_order]
    return CanonicalMetrics(
        n=int(rows.size), mean_mse=float(mse.mean()), worst_mse=float(mse.max()),
        worst_row=int(rows[worst_order[0]] + 1),
        rotation_deg=rotation, mirrored=mirrored, box=int(box), normalisation=NORMALISATION, mse=mse,
        examples=images(example_sel), example_rows=example_sel + 1,
        worst=images(worst_sel), worst_rows=worst_sel + 1,
    )
