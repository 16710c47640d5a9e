"""`relion-canon cryosparc-job`: run the job on a cryoSPARC project's particles as a cryoSPARC External job.

The job's options come from the one table on :class:`~relion_canon.job.JobConfig`; this command adds
the server, the particles' place on it and the local output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from relion_canon.cli.job_options import job_click_options, job_config_from_click
from relion_canon.options import CRYOSPARC


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
@job_click_options(CRYOSPARC)
def cryosparc_job(url: str, email: str | None, password: str | None, project_uid: str, workspace_uid: str,
                  input_ref: str, out_dir: Path, project_dir: Path | None, title: str | None, **options: Any) -> None:
    """Create a cryoSPARC External job on JOB.OUTPUT particles, run relion_canon on them, and save all, kept
    and rejected particles as its outputs (alignments2D/pose = the learned in-plane angle in the class frame).
    With --ref also alignments3D (the 3-D pose and shift) and a particles_posed output: the kept particles
    with a 3-D pose, for Local Refinement.

    Needs cryosparc-tools of the same major.minor version as the server (pip install 'relion_canon[cryosparc]').
    """
    from relion_canon.cryosparc.job import DEFAULT_TITLE, run_external_job
    from relion_canon.logs import log_to

    # The options are checked by click (a bad --model among them) before a job is made on the server.
    config = job_config_from_click(options, CRYOSPARC)
    with log_to(click.echo):
        result = run_external_job(url, project_uid, workspace_uid, input_ref, out_dir, config, email=email,
                                  password=password, project_dir=project_dir, title=title or DEFAULT_TITLE)
    click.echo(f"{result.project_uid} {result.job_uid}: " + ", ".join(f"{k} {v}" for k, v in result.saved.items()))
