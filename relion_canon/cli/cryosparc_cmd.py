"""`relion-canon cryosparc-job`: run the job on a cryoSPARC project's particles as a cryoSPARC External job."""

from __future__ import annotations

from pathlib import Path

import click

from relion_canon.pipeline import JobConfig


@click.command("cryosparc-job")
@click.option("--url", envvar="CRYOSPARC_BASE_URL", required=True,
              help="cryoSPARC's address as in the browser, e.g. http://localhost:39000 (or CRYOSPARC_BASE_URL).")
@click.option("--email", envvar="CRYOSPARC_EMAIL", default=None, help="cryoSPARC login (or CRYOSPARC_EMAIL).")
@click.option("--password", envvar="CRYOSPARC_PASSWORD", default=None,
              help="cryoSPARC password; prefer CRYOSPARC_PASSWORD or `python -m cryosparc.tools login`.")
@click.option("--project", "project_uid", required=True, help="Project uid, e.g. P3.")
@click.option("--workspace", "workspace_uid", required=True, help="Workspace uid for the new job, e.g. W1.")
@click.option("--input", "input_ref", required=True, help="The particles: JOB.OUTPUT, e.g. J42.particles.")
@click.option("--o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Local folder for the model, figures, STAR files and .cs/.csg results.")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the cryoSPARC project is on this machine (default: where the server says it is).")
@click.option("--title", default=None, help="Title of the new job.")
@click.option("--model", default=JobConfig.model, show_default=True,
              help="The model to train (see `relion-canon train --help`).")
@click.option("--model-path", type=click.Path(path_type=Path), default=None,
              help="Apply this trained model (model.pt or its folder) instead of training one.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: by data size).")
@click.option("--box", type=int, default=None, help="Fourier-crop the particles to this box (px) first.")
@click.option("--labels/--no-labels", default=False, show_default=True,
              help="Learn psi from the input's alignments2D/3D poses instead of without labels.")
@click.option("--outlier-threshold", type=float, default=JobConfig.outlier_threshold, show_default=True,
              help="Reject particles whose outlier score is above this.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
def cryosparc_job(url: str, email: str | None, password: str | None, project_uid: str, workspace_uid: str,
                  input_ref: str, out_dir: Path, project_dir: Path | None, title: str | None, model: str,
                  model_path: Path | None, epochs: int | None, box: int | None, labels: bool,
                  outlier_threshold: float, device: str, seed: int) -> None:
    """Create a cryoSPARC External job on JOB.OUTPUT particles, run relion_canon on them, and save all, kept
    and rejected particles as its outputs (alignments2D/pose = the learned in-plane angle).

    Needs cryosparc-tools of the same major.minor version as the server (pip install 'relion_canon[cryosparc]').
    """
    from relion_canon.cryosparc.job import DEFAULT_TITLE, run_external_job
    from relion_canon.models import MODEL_CLASSES

    if model not in MODEL_CLASSES:  # before a job is made on the server, not once it runs there
        raise click.BadParameter(f"{model!r} is not one of {', '.join(MODEL_CLASSES)}", param_hint="--model")
    config = JobConfig(model=model, model_path=str(model_path) if model_path else None, epochs=epochs, box=box,
                       labels=labels, outlier_threshold=outlier_threshold, device=device, seed=seed)
    result = run_external_job(url, project_uid, workspace_uid, input_ref, out_dir, config, email=email,
                              password=password, project_dir=project_dir, title=title or DEFAULT_TITLE,
                              log=click.echo)
    click.echo(f"{result.project_uid} {result.job_uid}: " + ", ".join(f"{k} {v}" for k, v in result.saved.items()))
