"""`relion-canon run`: the whole job (train or apply a model, refine, estimate, write) on a particle file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from relion_canon.models import MODEL_CLASSES
from relion_canon.pipeline import JobConfig

OUTLIER_CHOICES = ["ensemble", "iforest", "lof", "covariance"]


@click.command("run")
@click.option("--i", "particles", required=True, type=click.Path(path_type=Path),
              help="Particle STAR file, or a cryoSPARC particles .cs.")
@click.option("--o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: particles.star, particles_selected.star, particles_rejected.star, logfile.pdf, "
                   "report.json, model.pt (and .cs/.csg for .cs input).")
@click.option("--model", type=click.Choice(list(MODEL_CLASSES)), default=JobConfig.model, show_default=True)
@click.option("--model-path", type=click.Path(path_type=Path), default=None,
              help="Apply this trained model (model.pt or its folder) instead of training one.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: 1; the refinement sets the accuracy).")
@click.option("--train-particles", type=int, default=JobConfig.train_particles, show_default=True,
              help="Train on a random subset of this many particles (0: all).")
@click.option("--box", type=int, default=None, help="Fourier-crop the particles to this box (px) first.")
@click.option("--labels/--no-labels", default=False, show_default=True,
              help="Learn psi from the input's rlnAnglePsi (e.g. after Class2D).")
@click.option("--refine/--no-refine", default=True, show_default=True,
              help="Refine every angle against the learnt canonical image (and fit defocus to it).")
@click.option("--max-shift", type=float, default=JobConfig.max_shift_px, show_default=True,
              help="Refinement: translational search range in px (0: none).")
@click.option("--outliers", "outlier_method", type=click.Choice(OUTLIER_CHOICES), default=JobConfig.outlier_method,
              show_default=True)
@click.option("--outlier-threshold", type=float, default=JobConfig.outlier_threshold, show_default=True,
              help="Flag particles with rlnParticleSelectZScore above this.")
@click.option("--defocus-range", type=float, nargs=2, default=None,
              help="MIN MAX defocus in Å for paper B's quantile mapping (default: the STAR's own defocus).")
@click.option("--per-class", is_flag=True, help="Refine and estimate per rlnClassNumber, in each class's own frame.")
@click.option("--write-canonical", is_flag=True, help="Also write canonical.mrcs (one canonical image per particle).")
@click.option("--passthrough", type=click.Path(path_type=Path), default=None, help="cryoSPARC passthrough .cs.")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory image names are relative to (RELION or cryoSPARC project).")
@click.option("--device", default="auto", show_default=True)
@click.option("--j", "threads", type=int, default=None, help="CPU threads.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start training afresh even if the output folder holds a checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_command(particles: Path, out_dir: Path, model: str, model_path: Path | None, epochs: int | None,
                train_particles: int, box: int | None, labels: bool, refine: bool, max_shift: float,
                outlier_method: str, outlier_threshold: float, defocus_range: tuple[float, float] | None,
                per_class: bool, write_canonical: bool, passthrough: Path | None, project_dir: Path | None,
                device: str, threads: int | None, seed: int, no_resume: bool, quiet: bool) -> None:
    """Learn each particle's in-plane angle, defocus, weight and junk status, and write them back."""
    from relion_canon.pipeline import run_job
    from relion_canon.train.engine import TrainingDiverged

    config = JobConfig(
        model=model, model_path=str(model_path) if model_path else None, epochs=epochs,
        train_particles=train_particles or None, box=box, labels=labels, refine=refine, max_shift_px=max_shift,
        outlier_method=outlier_method, outlier_threshold=outlier_threshold,
        defocus_range=tuple(defocus_range) if defocus_range else None, per_class=per_class,
        write_canonical=write_canonical, device=device, threads=threads, seed=seed,
    )
    try:  # run_job bounds torch's and the BLAS's threads to config.threads
        run_job(particles, out_dir, config, resume=not no_resume, log=click.echo, progress=not quiet,
                project_dir=project_dir, passthrough=passthrough)
    except TrainingDiverged as exc:
        click.echo(f"relion-canon: error: {exc}", err=True)
        sys.exit(3)
