"""Predicting a STAR file with a trained model: each particle's in-plane angle written back as
``rlnAnglePsi``/``rlnAnglePsiPrior`` (``relion-canon predict``), a slice of rows at a time."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from relion_canon.analysis.model_psi import psi_degrees
from relion_canon.context import RunContext
from relion_canon.heap import return_freed_memory
from relion_canon.io.output_dir import disk_full, refuse_overwrite, stack_files
from relion_canon.io.particles import is_cryosparc, read_particles
from relion_canon.io.star import ParticleStar
from relion_canon.io.star_stream import count_particles, iter_star_chunks, star_chunk_writer, whole_file_rows
from relion_canon.train.engine import MODEL_FILE
from relion_canon.train.inference import LoadedModel, dataset_for, load_model, run_inference


def predict_file(
    particles: str | Path | ParticleStar,
    model_path: str | Path,
    out_star: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    *,
    context: RunContext = RunContext(),
) -> Path:
    """Apply a trained model to a particle STAR file and write it back with ``rlnAnglePsi``/``rlnAnglePsiPrior``.

    Every input block, column and row is kept; the output appears only once complete, and never over an input
    (the particle file, the model, an image stack). A STAR file given by
    path is read and written a slice of rows at a time, so memory does not grow with the number of particles.
    ``context.should_stop`` is polled before every batch; a stop raises ``InterruptedError``.
    """
    out_star = Path(out_star)
    model_file = Path(model_path) / MODEL_FILE if Path(model_path).is_dir() else Path(model_path)
    inputs = [model_file, *(() if isinstance(particles, ParticleStar) else (particles,))]
    refuse_overwrite([out_star], inputs, choose="output file (--o)")
    if isinstance(particles, ParticleStar) or is_cryosparc(particles):
        star = read_particles(particles, project_dir=context.project_dir)
        refuse_overwrite([out_star], stack_files(star, context.project_dir), choose="output file (--o)")
        loaded = load_model(model_path, device)
        with star_chunk_writer(out_star) as write:
            write(_predicted(loaded, star, batch_size, workers, context))
        return out_star
    scratch = out_star.parent.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    return_freed_memory()  # each slice's temporary arrays go back to the system, not to a growing heap
    try:
        with contextlib.closing(iter_star_chunks(particles, scratch)) as chunks:
            first = next(chunks)  # the particles are checked before the model, as when they are read whole
            refuse_overwrite([out_star], stack_files(first[1], context.project_dir), choose="output file (--o)")
            loaded = load_model(model_path, device)
            total = count_particles(particles)
            per_slice = replace(context, progress=False)  # one bar for the whole file, not one per slice
            with tqdm(total=total, desc="predicting", unit="particle", disable=not context.progress or None) as bar, \
                    star_chunk_writer(out_star) as write:
                for offset, star in itertools.chain([first], chunks):
                    if offset:  # a later slice may name other stacks; the output is written only at the end
                        refuse_overwrite([out_star], stack_files(star, context.project_dir), choose="output file (--o)")
                    with whole_file_rows(star.path, offset):
                        write(_predicted(loaded, star, batch_size, workers, per_slice))
                    bar.update(len(star))
    except OSError as exc:  # the slices' scratch file, beside the output, can fill the disk too
        raise disk_full(exc, out_star) or exc
    return out_star


def _predicted(loaded: LoadedModel, star: ParticleStar, batch_size: int, workers: int,
               context: RunContext) -> ParticleStar:
    dataset = dataset_for(loaded, star, context.project_dir)
    outputs = run_inference(loaded, dataset, batch_size, workers, context=context)
    psi = psi_degrees(outputs)
    return star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi})
