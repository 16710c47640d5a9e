"""A job's output and its references read from disk, and each job particle paired with its reference row."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.imagename import parse_image_name
from relion_canon.io.star import ParticleStar, read_star

JOB_STAR = "particles.star"
JOB_REPORT = "report.json"


def load_job(path: str | Path) -> tuple[ParticleStar, dict[str, Any]]:
    """A job's ``particles.star`` (from its folder, or any STAR it wrote) and its ``report.json`` ({} if none)."""
    path = Path(path)
    if path.is_dir():
        if not (path / JOB_STAR).is_file():
            raise InputError(f"no {JOB_STAR} in the job folder (not a relion_canon output?)", path)
        path = path / JOB_STAR
    star = read_star(path)
    if "rlnAnglePsi" not in star.particles.columns:
        raise InputError("no rlnAnglePsi column: not a relion_canon output", path)
    report: dict[str, Any] = {}
    report_path = path.parent / JOB_REPORT
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot parse report.json ({exc})", report_path) from exc
    return star, report


def _name_key(name: str) -> tuple[int, str]:
    """(image index, stack file name): the same particle although the folder is spelled differently (a set
    moved, or a job run from another working directory)."""
    ref = parse_image_name(name)
    return ref.index, os.path.basename(ref.path)


def match_rows(job: ParticleStar, reference: ParticleStar, notes: list[str] | None = None) -> np.ndarray:
    """For each row of ``job``, the 0-based row of the same particle in ``reference``.

    Joined on ``rlnImageName``, then on (image number, stack file name), and when the names do not match
    but both files have the same number of rows, on row order (said in ``notes``). Raises
    :class:`InputError` naming the first job particle that cannot be found.
    """
    job_names = job.image_names
    ref_names = reference.image_names
    for key in (str, _name_key):
        try:
            ref_keys = [key(n) for n in ref_names]
            job_keys = [key(n) for n in job_names]
        except InputError:
            continue
        lookup = {k: i for i, k in enumerate(ref_keys)}
        if len(lookup) != len(ref_keys):  # duplicate names: this key cannot identify a particle
            continue
        idx = [lookup.get(k, -1) for k in job_keys]
        if min(idx, default=0) >= 0:
            if key is _name_key and notes is not None:
                notes.append(f"Stack folders differ between {job.path} and {reference.path}: particles joined on "
                             "image number and stack file name.")
            return np.asarray(idx, dtype=np.int64)
    if len(job_names) == len(ref_names):
        if notes is not None:
            notes.append(f"Image names differ between {job.path} and {reference.path}: particles joined on row order.")
        return np.arange(len(job_names))
    ref_set = set(ref_names)
    missing = next(i for i, n in enumerate(job_names) if n not in ref_set)
    raise InputError(
        f"particle {job_names[missing]} is not in {reference.path} ({len(job_names)} particles here, "
        f"{len(ref_names)} there, names do not match, so rows cannot be joined)",
        job.path,
        missing + 1,
    )


def numeric_column(star: ParticleStar, column: str) -> np.ndarray | None:
    """``column`` of the particle table as float64, None when the STAR has no such column; a value that is
    not a finite number raises :class:`InputError` naming its row."""
    if column not in star.particles.columns:
        return None
    values = pd.to_numeric(star.particles[column], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f"{column} is not a number", star.path, int(bad[0]) + 1)
    return values


def mean_defocus_angstrom(star: ParticleStar) -> np.ndarray | None:
    """(rlnDefocusU + rlnDefocusV) / 2 per particle in Å (U alone without V), None without defocus."""
    u, v = numeric_column(star, "rlnDefocusU"), numeric_column(star, "rlnDefocusV")
    if u is None:
        return None
    return (u + (v if v is not None else u)) / 2

