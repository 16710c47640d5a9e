"""`relion-canon run`: the whole job (train or apply a model, refine, estimate, write) on a particle file.

The job's options come from the one table on :class:`~relion_canon.job.JobConfig`; this command adds
only what is about files and the run itself (input, output folder, resume, progress).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from relion_canon.cli.relaunch import relaunch_on_gpus
from relion_canon.cli.job_options import job_click_options, job_config_from_click
from relion_canon.options import RUN


@click.command("run")
@click.option("--i", "particles", required=True, type=click.Path(path_type=Path),
              help="Particle STAR file, or a cryoSPARC particles .cs.")
@click.option("--o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: particles.star, particles_selected.star, particles_rejected.star, logfile.pdf, "
                   "report.json, model.pt (and .cs/.csg for .cs input).")
@job_click_options(RUN)
@click.option("--passthrough", type=click.Path(path_type=Path), default=None, help="cryoSPARC passthrough .cs.")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory image names are relative to (RELION or cryoSPARC project).")
@click.option("--gpu", default=None,
              help="GPU ids, e.g. 0 or 0,1. Several: one process each through torchrun, sharing every pass over the "
                   "particles (one process writes).")
@click.option("--no-resume", is_flag=True, help="Start training afresh even if the output folder holds a checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_command(particles: Path, out_dir: Path, passthrough: Path | None, project_dir: Path | None, gpu: str | None,
                no_resume: bool, quiet: bool, **options: Any) -> None:
    """Learn each particle's in-plane angle, defocus, weight and junk status, and write them back."""
    import logging

    from relion_canon.context import RunContext
    from relion_canon.logs import log_to
    from relion_canon.job import run_job
    from relion_canon.parallel import is_writer
    from relion_canon.train.devices import device_from_gpu_ids
    from relion_canon.train.engine import TrainingDiverged

    config = job_config_from_click(options, RUN)
    relaunch_on_gpus(gpu)
    config.device = device_from_gpu_ids(gpu, config.device)
    # Under torchrun the processes share the work and rank 0 reports it; the others say only what fails.
    writer = is_writer()
    try:  # run_job bounds torch's and the BLAS's threads to config.threads
        with log_to(click.echo, level=logging.INFO if writer else logging.ERROR):
            run_job(particles, out_dir, config, resume=not no_resume,
                    context=RunContext(project_dir=project_dir, progress=not quiet and writer), passthrough=passthrough)
    except TrainingDiverged as exc:
        click.echo(f"relion-canon: error: {exc}", err=True)
        sys.exit(3)
