"""The jobs every front door runs (CLI, RELION External job, cryoSPARC): each a function of files to files."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from relion_canon.analysis.estimates import psi_degrees
from relion_canon.heap import return_freed_memory
from relion_canon.io.particles import is_cryosparc, read_particles
from relion_canon.io.star import ParticleStar
from relion_canon.io.star_stream import count_particles, iter_star_chunks, star_chunk_writer, whole_file_rows
from relion_canon.train.inference import LoadedModel, dataset_for, load_model, run_inference


def predict_file(
    particles: str | Path | ParticleStar,
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

    Every input block, column and row is kept; the output appears only once complete. A STAR file given by
    path is read and written a slice of rows at a time, so memory does not grow with the number of particles.
    """
    out_star = Path(out_star)
    if isinstance(particles, ParticleStar) or is_cryosparc(particles):
        star = read_particles(particles, project_dir=project_dir)
        loaded = load_model(model_path, device)
        with star_chunk_writer(out_star) as write:
            write(_predicted(loaded, star, batch_size, workers, progress, project_dir, should_stop))
        return out_star
    scratch = out_star.parent.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    return_freed_memory()  # each slice's temporary arrays go back to the system, not to a growing heap
    with contextlib.closing(iter_star_chunks(particles, scratch)) as chunks:
        first = next(chunks)  # the particles are checked before the model, as when they are read whole
        loaded = load_model(model_path, device)
        total = count_particles(particles)
        with tqdm(total=total, desc="predicting", unit="particle", disable=not progress or None) as bar, \
                star_chunk_writer(out_star) as write:
            for offset, star in itertools.chain([first], chunks):
                with whole_file_rows(star.path, offset):
                    write(_predicted(loaded, star, batch_size, workers, False, project_dir, should_stop))
                bar.update(len(star))
    return out_star


def _predicted(loaded: LoadedModel, star: ParticleStar, batch_size: int, workers: int, progress: bool,
               project_dir: str | Path | None, should_stop: Callable[[], bool] | None) -> ParticleStar:
    dataset = dataset_for(loaded, star, project_dir)
    outputs = run_inference(loaded, dataset, batch_size, workers, progress=progress, should_stop=should_stop)
    psi = psi_degrees(outputs)
    return star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi})
