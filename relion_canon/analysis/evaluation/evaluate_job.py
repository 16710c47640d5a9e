"""The whole evaluation of a job: its output and references read and joined, then each metric computed on the
particles it applies to (see :mod:`relion_canon.analysis.evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relion_canon.analysis.evaluation.canonical_images import canonical_metrics
from relion_canon.analysis.evaluation.matching import load_job, match_rows, mean_defocus_angstrom, numeric_column
from relion_canon.analysis.evaluation.metrics import (
    AngleMetrics,
    CanonicalMetrics,
    DefocusMetrics,
    OutlierMetrics,
    angle_metrics,
    defocus_metrics,
    outlier_metrics,
)
from relion_canon.analysis.evaluation.result import Evaluation
from relion_canon.errors import InputError
from relion_canon.io.ground_truth import read_ground_truth_star
from relion_canon.io.star import ParticleStar, read_star

ZSCORE = "rlnParticleSelectZScore"
RELION_Z_THRESHOLD = 2.0  # paper B: a particle whose RELION Z-score is above 2 is an outlier


@dataclass(frozen=True)
class _Inputs:
    """The job's STAR and report.json, and each reference given with, per job row, its 0-based row there."""

    job: ParticleStar
    report: dict[str, Any]
    truth: ParticleStar | None
    truth_idx: np.ndarray | None
    relion: ParticleStar | None
    relion_idx: np.ndarray | None

    def truth_rows(self) -> pd.DataFrame:
        """The truth's particle table in the job's row order."""
        return self.truth.particles.iloc[self.truth_idx].reset_index(drop=True)

    def relion_rows(self) -> pd.DataFrame:
        """The RELION reference's particle table in the job's row order."""
        return self.relion.particles.iloc[self.relion_idx].reset_index(drop=True)


@dataclass(frozen=True)
class _JobAnswers:
    """The job's per-particle answers from its STAR (None where the STAR has no such column)."""

    psi_deg: np.ndarray
    weights: np.ndarray | None  # w = exp(def̂ in µm) − 1
    defocus_A: np.ndarray | None


@dataclass(frozen=True)
class _AngleReference:
    """What the job's angles are scored against, per job row."""

    description: str
    source: Path  # the STAR the reference angles come from
    psi_deg: np.ndarray  # NaN where the reference has no angle
    subset: np.ndarray  # bool: the particles angle, defocus and canonical metrics use
    subset_text: str
    junk_kinds: np.ndarray | None  # ground-truth junk kind, "none" for a good particle (simulation only)


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
    notes: list[str] = []
    inputs = _load_inputs(job, truth, relion, notes)
    answers = _job_answers(inputs.job)
    symmetry = _symmetry(inputs.report, symmetry, notes)
    reference = _truth_reference(inputs, notes) if inputs.truth is not None else _relion_reference(inputs, notes)
    rows = _evaluated_rows(inputs.job, reference)
    weights = None if answers.weights is None else answers.weights[rows]
    angle = angle_metrics(answers.psi_deg[rows], reference.psi_deg[rows], weights, symmetry)
    peer = _peer_angles(inputs, reference, rows, symmetry, notes)
    defocus = _defocus(inputs, answers.defocus_A, rows, notes)
    outliers = _outliers(inputs, reference.junk_kinds, relion_z_threshold, notes)
    canonical = _canonical(inputs, rows, project_dir, n_examples, n_worst, notes)
    return Evaluation(
        job=str(inputs.job.path), reference=reference.description, n_particles=len(inputs.job),
        n_evaluated=int(rows.size), subset=reference.subset_text,
        angle=angle, defocus=defocus, outliers=outliers, canonical=canonical, peer=peer, notes=notes,
    )


def _load_inputs(
    job: str | Path, truth: str | Path | None, relion: str | Path | None, notes: list[str]
) -> _Inputs:
    job_star, report = load_job(job)
    truth_star = read_ground_truth_star(truth) if truth is not None else None
    truth_idx = match_rows(job_star, truth_star, notes) if truth_star is not None else None
    if truth_star is not None:
        _check_same_dataset(job_star, truth_star, truth_idx)
    relion_star = read_star(relion) if relion is not None else None
    relion_idx = match_rows(job_star, relion_star, notes) if relion_star is not None else None
    return _Inputs(job_star, report, truth_star, truth_idx, relion_star, relion_idx)


# Input columns a job copies through unchanged and a simulation draws per particle: equal on every joined row
# when the job ran on this simulation, different almost everywhere when it ran on another one.
_SAME_DATASET_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")


def _check_same_dataset(job: ParticleStar, truth: ParticleStar, truth_idx: np.ndarray) -> None:
    """Refuse a ground truth of another simulated set: scored against it, a job gets a random-looking psi error
    and an AUC near 0.5, with no sign of why. Image names that match exactly are enough; names joined only on
    stack file name and image number (another folder, e.g. a RELION project's copy), or on row order, must
    also agree on the per-particle columns the simulation drew."""
    job_names = np.asarray(job.image_names, dtype=object)
    truth_names = np.asarray(truth.image_names, dtype=object)[truth_idx]
    if (job_names == truth_names).all():
        return
    for label in _SAME_DATASET_COLUMNS:
        if label in job.particles.columns and label in truth.particles.columns:
            here = pd.to_numeric(job.particles[label], errors="coerce").to_numpy(np.float64)
            there = pd.to_numeric(truth.particles[label], errors="coerce").to_numpy(np.float64)[truth_idx]
            differ = np.flatnonzero(~np.isclose(here, there, rtol=1e-6, atol=1e-3))
            if differ.size:
                row = int(differ[0])
                raise InputError(
                    f"the job's particles are not those of {truth.path}: {label} {here[row]:g} here but "
                    f"{there[row]:g} for its image {truth_names[row]} there ({differ.size} of {len(here)} rows "
                    f"differ); give the ground truth of the set the job ran on", job.path, row + 1)
            return
    if not all(_stack_key(a) == _stack_key(b) for a, b in zip(job_names, truth_names)):
        row = next(i for i, (a, b) in enumerate(zip(job_names, truth_names)) if _stack_key(a) != _stack_key(b))
        raise InputError(f"image {job_names[row]} is not in {truth.path} (its row there names {truth_names[row]}): "
                         "the image names do not match, so this is not the ground truth of the set the job ran on",
                         job.path, row + 1)


def _stack_key(name: str) -> tuple[str, str]:
    """(image number, stack file name) of an image name, folders left out."""
    index, _, stack = str(name).partition("@")
    return index.lstrip("0"), Path(stack).name


def _job_answers(job_star: ParticleStar) -> _JobAnswers:
    psi = numeric_column(job_star, "rlnAnglePsi")
    weights = numeric_column(job_star, "rlnParticleFigureOfMerit")
    defocus = numeric_column(job_star, "rlnCanonDefocus")
    if weights is None and defocus is not None:
        weights = np.exp(defocus / 1e4) - 1.0
    return _JobAnswers(psi, weights, defocus)


def _symmetry(report: dict[str, Any], asked: int | None, notes: list[str]) -> int:
    """The C_n to compare angles with: ``asked``, else the one the job detected, else 1."""
    detected = (report.get("symmetry") or {}).get("n") if isinstance(report.get("symmetry"), dict) else None
    if asked is None:
        symmetry = int(detected) if isinstance(detected, int) and detected >= 1 else 1
        if symmetry > 1:
            notes.append(f"The job detected C{symmetry} symmetry (report.json): angles compared modulo "
                         f"{360 / symmetry:g}° (give symmetry 1 to compare them on the full circle).")
        return symmetry
    if isinstance(detected, int) and detected != asked:
        notes.append(f"Angles compared with C{asked} symmetry as asked, although the job detected C{detected}.")
    return asked


def _truth_reference(inputs: _Inputs, notes: list[str]) -> _AngleReference:
    """The simulation's true angles, on the non-junk particles (a junk pick has no true in-plane angle)."""
    t = inputs.truth_rows()
    junk = t["rlnCanonIsJunk"].to_numpy(int).astype(bool)
    subset = ~junk
    views = t.loc[subset, "rlnCanonViewId"].nunique() if "rlnCanonViewId" in t.columns else 1
    if views > 1:
        notes.append(f"The truth has {views} views; one global offset and sign is fitted across them.")
    return _AngleReference(
        description=f"simulation ground truth {inputs.truth.path}", source=inputs.truth.path,
        psi_deg=t["rlnAnglePsi"].to_numpy(np.float64), subset=subset,
        subset_text="non-junk particles (ground-truth labels)", junk_kinds=t["rlnCanonJunkKind"].astype(str).to_numpy(),
    )


def _relion_reference(inputs: _Inputs, notes: list[str]) -> _AngleReference:
    """RELION's angles, on every particle (it has no junk labels)."""
    psi = _relion_psi(inputs)
    if psi is None:
        raise InputError("RELION reference has no rlnAnglePsi column", inputs.relion.path)
    r = inputs.relion_rows()
    if "rlnClassNumber" in r.columns and r["rlnClassNumber"].nunique() > 1:
        notes.append(f"The reference has {r['rlnClassNumber'].nunique()} classes, each with its own in-plane "
                     "frame; one global offset is fitted across them (evaluate one class for paper B's protocol).")
    return _AngleReference(
        description=f"RELION reference {inputs.relion.path}", source=inputs.relion.path, psi_deg=psi,
        subset=np.ones(len(inputs.job), bool), subset_text="all particles", junk_kinds=None,
    )


def _relion_psi(inputs: _Inputs) -> np.ndarray | None:
    """RELION's rlnAnglePsi per job row (NaN where not a number), None without the column."""
    r = inputs.relion_rows()
    if "rlnAnglePsi" not in r.columns:
        return None
    return pd.to_numeric(r["rlnAnglePsi"], errors="coerce").to_numpy(np.float64)


def _evaluated_rows(job_star: ParticleStar, reference: _AngleReference) -> np.ndarray:
    """The job's 0-based rows in the reference's subset that have a reference angle."""
    if not reference.subset.any():
        raise InputError("no particle to evaluate angles on (every particle is junk in the truth)", job_star.path)
    rows = np.flatnonzero(reference.subset & np.isfinite(reference.psi_deg))
    if rows.size == 0:
        raise InputError("no reference angle for any particle to evaluate", reference.source)
    return rows


def _relion_name(star: ParticleStar) -> str:
    return f"RELION ({star.path.name})"


def _peer_angles(
    inputs: _Inputs, reference: _AngleReference, rows: np.ndarray, symmetry: int, notes: list[str]
) -> dict[str, AngleMetrics]:
    """RELION's angles scored like the job's, when RELION is a peer beside the ground truth."""
    if inputs.truth is None or inputs.relion is None:
        return {}
    rel_psi = _relion_psi(inputs)
    if rel_psi is None:
        notes.append(f"{inputs.relion.path} has no rlnAnglePsi: RELION's angles not scored.")
        return {}
    ok = rows[np.isfinite(rel_psi[rows])]
    if not ok.size:
        return {}
    return {_relion_name(inputs.relion): angle_metrics(rel_psi[ok], reference.psi_deg[ok], None, symmetry)}


def _defocus(
    inputs: _Inputs, est_defocus_A: np.ndarray | None, rows: np.ndarray, notes: list[str]
) -> DefocusMetrics | None:
    """The job's defocus against the truth's mean defocus, else the reference's (else the job STAR's) CTFFIND."""
    if est_defocus_A is None:
        notes.append("The job's STAR has no rlnCanonDefocus: no defocus metric.")
        return None
    if inputs.truth is not None:
        true = mean_defocus_angstrom(inputs.truth)
        if true is None or not np.any(true[inputs.truth_idx][rows] > 0):
            notes.append("The simulation has no CTF (no defocus): no defocus metric.")
            return None
        return defocus_metrics(est_defocus_A[rows], true[inputs.truth_idx][rows], "ground truth mean defocus")
    ref = mean_defocus_angstrom(inputs.relion)
    source = f"CTFFIND defocus in {inputs.relion.path.name}"
    if ref is not None:
        ref = ref[inputs.relion_idx]
    else:
        ref = mean_defocus_angstrom(inputs.job)
        source = f"CTFFIND defocus in {inputs.job.path.name} (the reference has none)"
    if ref is None:
        notes.append("Neither STAR has rlnDefocusU/V: no defocus metric.")
        return None
    return defocus_metrics(est_defocus_A[rows], ref[rows], source)


def _outliers(
    inputs: _Inputs, kinds: np.ndarray | None, z_threshold: float, notes: list[str]
) -> OutlierMetrics | None:
    """The job's Z-score (and RELION's beside it) against the truth's junk labels, else RELION's Z > threshold."""
    score = numeric_column(inputs.job, ZSCORE)
    if score is None:
        notes.append(f"The job's STAR has no {ZSCORE}: no outlier metrics.")
        return None
    info = inputs.report.get("outliers") or {}
    method = info.get("method")
    threshold = info.get("threshold")
    flags = numeric_column(inputs.job, "rlnCanonIsOutlier")
    if flags is None and threshold is not None:
        flags = score > float(threshold)
    name = f"relion_canon ({method})" if method else "relion_canon"
    scores = {name: score}
    relion_z = None
    if inputs.relion is not None and ZSCORE in inputs.relion.particles.columns:
        relion_z = numeric_column(inputs.relion, ZSCORE)[inputs.relion_idx]
    if inputs.truth is not None:
        labels = inputs.truth.particles["rlnCanonIsJunk"].to_numpy(int)[inputs.truth_idx].astype(bool)
        source = "ground-truth junk labels"
        if relion_z is not None:
            scores[_relion_name(inputs.relion)] = relion_z
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


def _canonical(
    inputs: _Inputs, rows: np.ndarray, project_dir: str | Path | None, n_examples: int, n_worst: int,
    notes: list[str],
) -> CanonicalMetrics | None:
    if inputs.truth is None:
        notes.append("No ground-truth images with a RELION reference: no canonical metric.")
        return None
    return canonical_metrics(inputs.job, inputs.truth, inputs.truth_idx, rows, project_dir, n_examples, n_worst,
                             notes)
