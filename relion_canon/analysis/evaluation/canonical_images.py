"""The canonical-image metric of a job against a simulation (paper A, Table 1): the job's canonical images
read beside the truth's clean images, the learned frame fitted and removed (:mod:`.frame`), the per-image MSE,
and the examples and worst cases the figures show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from relion_canon.analysis.evaluation.frame import (
    NORMALISATION,
    PairReader,
    fit_frame,
    frame_errors,
    spread_indices,
    to_truth_frame,
)
from relion_canon.analysis.evaluation.metrics import CanonicalMetrics
from relion_canon.errors import InputError
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import ParticleStar

JOB_CANONICAL_STACK = "canonical.mrcs"
CANONICAL_COLUMN = "rlnCanonCanonicalImage"
CLEAN_COLUMN = "rlnCanonCleanImageName"


@dataclass(frozen=True)
class _Sources:
    """Each in its STAR's row order: the job's canonical images, the truth's clean images, the job's inputs."""

    canonical: ParticleSource
    clean: ParticleSource
    inputs: ParticleSource | None  # None when the input images cannot be found (they are only shown)


def canonical_metrics(
    job_star: ParticleStar,
    truth_star: ParticleStar,
    truth_idx: np.ndarray,
    rows: np.ndarray,
    project_dir: str | Path | None,
    n_examples: int,
    n_worst: int,
    notes: list[str],
) -> CanonicalMetrics | None:
    """The canonical MSE of the job's 0-based STAR ``rows`` (their truth rows: ``truth_idx[rows]``) after the
    frame fit, with ``n_examples`` spread examples and the ``n_worst`` worst images for the figures; None
    (said in ``notes``) when the job wrote no canonical images."""
    sources = _sources(job_star, truth_star, project_dir, notes)
    if sources is None:
        notes.append("The job wrote no canonical images (run it with write_canonical): no canonical metric.")
        return None
    box = sources.canonical.box
    if sources.clean.box != box:
        notes.append(f"Truth images ({sources.clean.box} px) Fourier-resampled to the job's canonical box ({box} px).")
    read_pairs = _pair_reader(sources, truth_idx[rows], rows, box)
    groups = _frame_groups(job_star, rows, notes)
    frames = {number: fit_frame(_within(read_pairs, where), where.size) for number, where in groups.items()}
    mse = np.empty(rows.size)
    group_of = np.empty(rows.size, dtype=np.int64)
    for number, where in groups.items():
        mse[where] = frame_errors(_within(read_pairs, where), where.size, *frames[number])
        group_of[where] = number

    def images(positions: np.ndarray) -> dict[str, np.ndarray]:
        canon, truth = read_pairs(positions)
        turned = np.stack([to_truth_frame(c[None], *frames[group_of[k]])[0] for c, k in zip(canon, positions)])
        out = {"canonical": turned, "truth": truth}
        if sources.inputs is not None:
            out = {"input": sources.inputs.read(rows[positions]), **out}
        return out

    order = np.argsort(mse, kind="stable")[::-1]  # worst first
    worst_order = _worst_positions(order, _shared_names(job_star, rows, notes), n_worst)
    example_positions = spread_indices(rows.size, n_examples)
    largest = max(groups, key=lambda number: groups[number].size)
    return CanonicalMetrics(
        n=int(rows.size), mean_mse=float(mse.mean()), worst_mse=float(mse.max()),
        worst_row=int(rows[order[0]] + 1),
        rotation_deg=frames[largest][0], mirrored=frames[largest][1], box=int(box), normalisation=NORMALISATION,
        mse=mse, frames=len(frames),
        examples=images(example_positions), example_rows=rows[example_positions] + 1,
        worst=images(worst_order) if worst_order.size else {}, worst_rows=rows[worst_order] + 1,
        worst_mses=mse[worst_order],
    )


def _frame_groups(job_star: ParticleStar, rows: np.ndarray, notes: list[str]) -> dict[int, np.ndarray]:
    """Positions into ``rows`` that share one canonical frame: one group per job class (``rlnClassNumber``),
    since each class's frame is its own (a class average, or a network's frame learnt per view, is defined
    only up to its own turn and mirror); one group without classes."""
    everything = {0: np.arange(rows.size)}
    if "rlnClassNumber" not in job_star.particles.columns:
        return everything
    numbers = job_star.particles["rlnClassNumber"].to_numpy()[rows]
    distinct = np.unique(numbers)
    if distinct.size < 2:
        return everything
    notes.append(f"One canonical frame (turn and mirror) fitted per job class ({distinct.size} classes): each class's "
                 "frame is its own. The frame rotation shown is the largest class's.")
    return {int(number): np.flatnonzero(numbers == number) for number in distinct}


def _within(read_pairs: PairReader, where: np.ndarray) -> PairReader:
    """``read_pairs`` on the positions ``where`` (positions into ``where`` in, pairs out)."""
    return lambda positions: read_pairs(where[positions])


def _worst_positions(order: np.ndarray, names: np.ndarray | None, n_worst: int) -> np.ndarray:
    """The first ``n_worst`` of ``order`` (positions, worst first). With shared canonical images (``names``, one
    per position), the worst particle of each distinct image; none when all share one."""
    if names is None:
        return order[: max(n_worst, 1)]
    _, first = np.unique(names[order], return_index=True)
    if first.size == 1:
        return order[:0]
    return order[np.sort(first)][: max(n_worst, 1)]


def _shared_names(job_star: ParticleStar, rows: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """The canonical image names of ``rows`` when particles share them (with refinement, --write-canonical
    names each particle's class average), saying so in ``notes``; None when each has its own."""
    if CANONICAL_COLUMN not in job_star.particles.columns:
        return None
    names = job_star.particles[CANONICAL_COLUMN].astype(str).to_numpy()[rows]
    distinct = len(np.unique(names))
    if distinct == len(names):
        return None
    if distinct == 1:
        notes.append(f"Every particle's {CANONICAL_COLUMN} is the same image (one class average): no page of "
                     "worst canonical images, which would show that image again and again.")
    else:
        notes.append(f"{CANONICAL_COLUMN} names {distinct} distinct images for {len(names)} particles (class "
                     "averages): the canonical MSE compares each particle's class average with its clean truth, "
                     "and the worst canonical images are the worst particle of each distinct image.")
    return names


def _pair_reader(sources: _Sources, truth_rows: np.ndarray, job_rows: np.ndarray, box: int) -> PairReader:
    """Positions into ``job_rows`` → (the job's canonical images, the clean truth resampled to ``box``)."""
    from relion_canon.preprocess.fourier import fourier_resample

    def read_pairs(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        truth = sources.clean.read(truth_rows[positions])
        if truth.shape[-1] != box:
            truth = fourier_resample(truth, box)
        return sources.canonical.read(job_rows[positions]), truth

    return read_pairs


def _sources(
    job_star: ParticleStar, truth_star: ParticleStar, project_dir: str | Path | None, notes: list[str]
) -> _Sources | None:
    """The images to compare, or None when the job wrote no canonical images."""

    def source_for(star: ParticleStar, column: str) -> ParticleSource:
        table = pd.DataFrame({"rlnImageName": star.particles[column].astype(str)})
        return ParticleSource.from_star(star.with_particles(table), project_dir)

    if CANONICAL_COLUMN in job_star.particles.columns:
        canonical = source_for(job_star, CANONICAL_COLUMN)
    else:
        stack = job_star.path.parent / JOB_CANONICAL_STACK
        if not stack.is_file():
            return None
        canonical = ParticleSource.from_stack(stack)
        if len(canonical) != len(job_star):
            raise InputError(f"{len(canonical)} canonical images for {len(job_star)} particles in {job_star.path} "
                             f"and no {CANONICAL_COLUMN} column to match them", stack)
        notes.append(f"No {CANONICAL_COLUMN} column: canonical images taken from {stack} in STAR order.")
    if CLEAN_COLUMN not in truth_star.particles.columns:
        raise InputError(f"the ground truth has no {CLEAN_COLUMN} column (clean images)", truth_star.path)
    clean = source_for(truth_star, CLEAN_COLUMN)
    try:
        inputs = ParticleSource.from_star(job_star, project_dir)
    except InputError as exc:
        notes.append(f"Input images not shown ({exc}).")
        inputs = None
    return _Sources(canonical, clean, inputs)
