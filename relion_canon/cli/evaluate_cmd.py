"""`relion-canon evaluate`: score a job's output against simulation ground truth or a RELION reference run."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from relion_canon.errors import InputError


@click.command("evaluate")
@click.option("--i", "job", required=True, type=click.Path(path_type=Path),
              help="The job's output folder, or a particles.star it wrote.")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="A folder made by `relion-canon simulate`, or its ground_truth.star.")
@click.option("--relion", type=click.Path(path_type=Path), default=None,
              help="A RELION run's particle STAR (e.g. Class2D run_it020_data.star): the reference without --truth, "
                   "a peer scored beside the job with it.")
@click.option("--o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: evaluation.md, evaluation.json, evaluation.pdf and PNGs.")
@click.option("--symmetry", type=click.IntRange(min=1), default=None,
              help="C_n symmetry of the view: angles are compared modulo 360/n degrees "
                   "[default: the n the job detected (report.json), else 1].")
@click.option("--relion-z", type=float, default=2.0, show_default=True,
              help="RELION rlnParticleSelectZScore above this labels a particle an outlier (paper B: 2).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="RELION project directory that image names are relative to (default: the current directory).")
def evaluate_command(job: Path, truth: Path | None, relion: Path | None, out_dir: Path, symmetry: int | None,
                     relion_z: float, project_dir: Path | None) -> None:
    """Score a job's angles, defocus, outlier scores and canonical images (see benchmarks.md for the metrics).

    Prints the table (Markdown) and the files written.
    """
    if truth is None and relion is None:
        raise click.UsageError("give --truth (a simulated set) and/or --relion (a RELION reference STAR)")
    # Heavy imports (matplotlib, scikit-learn, torch) only once the arguments are known to be usable.
    from relion_canon.analysis.evaluation import evaluate
    from relion_canon.analysis.report import write_evaluation
    from relion_canon.io.output_dir import check_finished
    from relion_canon.logs import log_to

    try:
        check_finished(job if job.is_dir() else job.parent)  # a killed job's folder holds a partial set
        evaluation = evaluate(job, truth, relion, symmetry=symmetry, project_dir=project_dir,
                              relion_z_threshold=relion_z)
        with log_to(sys.stderr):
            paths = write_evaluation(out_dir, evaluation)
    except InputError as exc:
        # Same one-line report and status as the relion-canon group gives, also when called on its own.
        click.echo(f"relion-canon: error: {exc}", err=True)
        sys.exit(2)
    click.echo(evaluation.to_markdown())
    click.echo("Wrote:")
    for path in paths:
        click.echo(f"  {path}")
