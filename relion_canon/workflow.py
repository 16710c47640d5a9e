"""The jobs every front door runs (CLI, RELION External job, cryoSPARC): each a function of files to files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from relion_canon.analysis.estimates import psi_degrees
from relion_canon.io.particles import read_particles
from relion_canon.io.star import write_star
from relion_canon.train.inference import dataset_for, load_model, run_inference


def predict_file(
    particles: str | Path,
    model_path: str | Path,
    out_star: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
    project_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Apply a trained model to a particle STAR file and write it back with ``rlnAnglePsi``/``rlnAnglePsiPrior``.

    Every input block, column and row is kept; the output appears only once complete.
    """
    star = read_particles(particles, project_dir=project_dir)
    loaded = load_model(model_path, device)
    dataset = dataset_for(loaded, star, project_dir)
    outputs = run_inference(loaded, dataset, batch_size, workers, progress=progress, should_stop=should_stop)
    psi = psi_degrees(outputs)
    return write_star(star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi}), out_star)
