"""Figures and reports on disk: a job's own plots (``logfile.pdf`` + PNGs, what RELION's GUI shows) and the
``evaluate`` command's (``evaluation.md``, ``evaluation.json``, ``evaluation.pdf`` + PNGs).

Every file is written to a temporary name and renamed into place, so a reader (or RELION's GUI polling the
job folder) never sees half a PDF. Parts that a run does not have (no training history when an existing model
was applied, no defocus in the STAR, no class averages) are left out, never drawn empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from relion_canon.analysis import figures, image_figures
from relion_canon.analysis.class_summary import class_summaries
from relion_canon.analysis.evaluation import Evaluation
from relion_canon.analysis.estimate.results import Estimates
from relion_canon.io.atomic import atomic_path
from relion_canon.io.star import NO_PRIOR

log = logging.getLogger(__name__)

LOGFILE_PDF = "logfile.pdf"
EVALUATION_PDF = "evaluation.pdf"
EVALUATION_MD = "evaluation.md"
EVALUATION_JSON = "evaluation.json"

NamedFigures = list[tuple[str, Figure]]

_ALIGNED = "after one global offset and sign (paper B, eq. 8)"
# Every figure a job can draw (file stems), in the order of the logfile.
JOB_FIGURES = ("training_curves", "latent_pca", "psi_histogram", "defocus_vs_star", "outlier_scores",
               "canonical_examples", "class_averages", "class_gallery", "orientation_matches",
               "orientation_directions")


def job_figures(estimates: Estimates, history: Sequence[dict[str, Any]]) -> NamedFigures:
    """(file stem, figure) for each plot a job can make from its own results (no truth needed)."""
    cols = estimates.columns
    out: NamedFigures = []
    psi = np.asarray(cols["rlnAnglePsi"], dtype=np.float64) if "rlnAnglePsi" in cols else None
    est_defocus_um = np.asarray(cols["rlnCanonDefocus"], dtype=np.float64) / 1e4 if "rlnCanonDefocus" in cols else None
    star_defocus_um = None if estimates.defocus_input is None else np.asarray(estimates.defocus_input) / 1e4

    if history and any("/" in k for entry in history for k in entry):
        out.append(("training_curves", figures.training_curves(history)))
    latent = np.asarray(estimates.latent)
    if latent.ndim == 2 and latent.shape[1] >= 2 and latent.shape[0] >= 3 and np.isfinite(latent).all():
        # Paper B colours by the true defocus; the STAR's CTFFIND value is the closest a job has to it.
        if star_defocus_um is not None:
            defocus, label = star_defocus_um, "defocus from the STAR (µm)"
        else:
            defocus, label = est_defocus_um, "estimated defocus (µm)"
        out.append(("latent_pca", figures.latent_pca(latent, psi, defocus, angle_label="estimated psi (°)",
                                                     defocus_label=label)))
    if psi is not None:
        out.append(("psi_histogram", figures.angle_histogram(psi)))
    if est_defocus_um is not None and star_defocus_um is not None:
        rmse = float(np.sqrt(np.nanmean((est_defocus_um - star_defocus_um) ** 2)))
        out.append(("defocus_vs_star", figures.predicted_vs_true(
            star_defocus_um, est_defocus_um, quantity="defocus", unit="µm", reference="STAR (CTFFIND)",
            estimate="relion_canon estimate", rmse=rmse)))
    outliers = estimates.report.get("outliers") or {}
    scores: dict[str, np.ndarray] = {}
    if "rlnParticleSelectZScore" in cols:
        # The threshold applies to the score written to the STAR, so it comes first (the line counts its flags);
        # each detector is shown beside it unless it is that same score.
        final = np.asarray(cols["rlnParticleSelectZScore"], dtype=np.float64)
        scores[f"rlnParticleSelectZScore, {outliers.get('method', 'job')}"] = final
        for name, s in estimates.outlier_scores.items():
            s = np.asarray(s, dtype=np.float64)
            if s.shape != final.shape or not np.allclose(s, final, equal_nan=True):
                scores[name] = s
    else:
        scores = {name: np.asarray(s, dtype=np.float64) for name, s in estimates.outlier_scores.items()}
    if scores:
        threshold = outliers.get("threshold")
        flagged = np.asarray(cols["rlnCanonIsOutlier"], dtype=bool) if "rlnCanonIsOutlier" in cols else None
        out.append(("outlier_scores", figures.outlier_scores(scores, None if threshold is None else float(threshold),
                                                             flagged=flagged)))
    if len(estimates.example_index) and len(estimates.example_canonical):
        titles = [f"row {int(i) + 1}" for i in estimates.example_index]
        if psi is not None:
            titles = [f"{t}\npsi {psi[int(i)]:.0f}°" for t, i in zip(titles, estimates.example_index)]
        out.append(("canonical_examples", image_figures.image_grid(
            {"input": estimates.example_inputs, "canonical": estimates.example_canonical},
            title="Particles and their canonical (unrotated, denoised) images", column_titles=titles)))
    if estimates.class_averages:
        pixel_size = (estimates.report.get("class_averages") or {}).get("pixel_size_A")
        out.append(("class_averages", image_figures.class_averages(estimates.class_averages, pixel_size)))
        summaries = class_summaries(estimates.report.get("classes", {}), len(estimates.latent))
        if any(c in summaries for c in estimates.class_averages):
            out.append(("class_gallery", image_figures.class_gallery(estimates.class_averages, summaries)))
    return out + orientation_figures(estimates)


def orientation_figures(estimates: Estimates) -> NamedFigures:
    """With a reference map: each matched class beside its projection, and where the directions lie (the
    classes', and the particles' own where they were searched)."""
    orientation = estimates.report.get("orientation") or {}
    matched = estimates.matched_projections
    if not matched or not orientation:
        return []
    cols = estimates.columns
    reports = orientation.get("classes", {})
    # Weight a class by its particles that got a prior (a class's junk particles get none).
    counts: dict[int, int] = {}
    own = None
    if "rlnClassNumber" in cols and "rlnAngleTiltPrior" in cols:
        number = np.asarray(cols["rlnClassNumber"])
        posed = np.asarray(cols["rlnAngleTiltPrior"], dtype=np.float64) < NO_PRIOR - 0.01
        counts = {int(c): int((posed & (number == c)).sum()) for c in matched}
        if orientation.get("particle_directions") and "rlnAngleRotPrior" in cols:
            own = (np.asarray(cols["rlnAngleRotPrior"], dtype=np.float64)[posed],
                   np.asarray(cols["rlnAngleTiltPrior"], dtype=np.float64)[posed])
    sizes = {int(c): int(f.get("n_particles", 0)) for c, f in (estimates.report.get("classes") or {}).items()}
    shown = [c for c in sorted(matched) if "rot_deg" in reports.get(str(c), {})]
    out: NamedFigures = [("orientation_matches", image_figures.orientation_matches(
        matched, reports, {c: sizes.get(c, counts.get(c, 0)) for c in matched}))]
    if shown:
        facts = [reports[str(c)] for c in shown]
        out.append(("orientation_directions", figures.direction_distribution(
            np.array([f["rot_deg"] for f in facts]), np.array([f["tilt_deg"] for f in facts]),
            np.array([counts.get(c, sizes.get(c, 0)) for c in shown]), [str(c) for c in shown],
            ambiguous=np.array([bool(f.get("ambiguous")) for f in facts]),
            symmetry=str(orientation.get("symmetry", "C1")), particles_deg=own)))
    return out


def write_figures(out_dir: Path, estimates: Estimates, history: list[dict]) -> list[Path]:
    """Write the job's figures as PNGs in ``out_dir`` and all of them in ``logfile.pdf``; returns the paths
    (PNGs first, the PDF last). Says what it wrote on this module's logger."""
    return _save(Path(out_dir), job_figures(estimates, history), LOGFILE_PDF, log.info, stale=JOB_FIGURES)


def evaluation_figures(evaluation: Evaluation) -> NamedFigures:
    """(file stem, figure) for each plot the evaluation's results allow."""
    out: NamedFigures = []
    reference = "truth" if evaluation.reference.startswith("simulation") else "RELION"
    a = evaluation.angle
    if a is not None:
        out.append(("angle_vs_reference", figures.predicted_vs_true(
            a.true_deg, a.aligned_deg, quantity="in-plane angle", unit="°", reference=reference,
            estimate="relion_canon", rmse=a.rmse_deg, cyclic=True, note=_ALIGNED)))
        out.append(("angle_errors", figures.error_histogram(a.errors_deg)))
    for i, (name, p) in enumerate(evaluation.peer.items()):
        out.append((f"peer{i + 1}_angle_vs_reference", figures.predicted_vs_true(
            p.true_deg, p.aligned_deg, quantity="in-plane angle", unit="°", reference=reference,
            estimate=name, rmse=p.rmse_deg, cyclic=True, note=_ALIGNED)))
    d = evaluation.defocus
    if d is not None:
        out.append(("defocus_vs_reference", figures.predicted_vs_true(
            d.true_um, d.predicted_um, quantity="defocus", unit="µm", reference=d.reference,
            estimate="relion_canon", rmse=d.rmse_um)))
    o = evaluation.outliers
    if o is not None:
        if any(v is not None for v in o.auc.values()):
            out.append(("roc", figures.roc_curves(o.labels, o.scores, label_source=o.label_source)))
        out.append(("outlier_scores", figures.outlier_scores(o.scores, o.threshold, labels=o.labels)))
    c = evaluation.canonical
    if c is not None:
        rows = _grid_rows(c.examples)
        titles = [f"row {int(r)}" for r in c.example_rows]
        out.append(("canonical_examples", image_figures.image_grid(
            rows, title=f"Inputs, canonical images and clean truth (mean MSE {c.mean_mse:.3g})", column_titles=titles)))
        # No page when every particle's canonical image is one class average: it would show that one image again
        # and again (the evaluation's notes say so).
        if len(c.worst_rows):
            out.append(("canonical_worst", image_figures.worst_cases(_grid_rows(c.worst), c.worst_mses, c.worst_rows)))
    return out


def _grid_rows(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {"input": "input (particle)", "canonical": "relion_canon canonical\n(in the truth's frame)",
             "truth": "ground truth\n(clean, unrotated)"}
    return {names.get(k, k): v for k, v in images.items()}


def write_evaluation(out_dir: Path, evaluation: Evaluation) -> list[Path]:
    """Write ``evaluation.md``, ``evaluation.json``, the figures as PNGs and ``evaluation.pdf`` into
    ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    # Everything is computed before the first file is written, so a failure leaves no partial set behind.
    named = evaluation_figures(evaluation)
    texts = ((EVALUATION_MD, evaluation.to_markdown()), (EVALUATION_JSON, evaluation.to_json() + "\n"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts:
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
        paths.append(out_dir / name)
    return paths + _save(out_dir, named, EVALUATION_PDF, log.info)


def _save(out_dir: Path, named: NamedFigures, pdf_name: str, say: Callable[[str], None],
          stale: Sequence[str] = ()) -> list[Path]:
    """PNGs and one PDF; ``stale`` names figures an earlier run in the folder may have left that this run
    does not redraw (e.g. training curves once an existing model is applied): they are removed, so that
    the folder never mixes figures of two runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    current = {stem for stem, _ in named}
    for stem in stale:
        if stem not in current:
            (out_dir / f"{stem}.png").unlink(missing_ok=True)
    paths: list[Path] = []
    for stem, fig in named:
        path = out_dir / f"{stem}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        # Keep the layout the PNG was drawn with: the PDF page is the same figure, and laying it out again
        # costs as much as drawing it.
        fig.set_layout_engine("none")
        paths.append(path)
    pdf = out_dir / pdf_name
    with atomic_path(pdf) as tmp:
        with PdfPages(tmp) as pages:
            for _, fig in named:
                pages.savefig(fig)
            if not named:
                # An empty PdfPages writes no valid PDF; RELION's GUI still expects the logfile to open.
                pages.savefig(figures.text_page("No figures: this run produced nothing to plot."))
    paths.append(pdf)
    say(f"Wrote {len(named)} figures to {out_dir} ({pdf_name} and PNGs)")
    return paths

