"""A simulated set's ground truth (``ground_truth.star``): the particles' true angles, CTF and junk labels.

The simulator writes it and the evaluation reads it; it lives here, with the other file formats, so that
reading it does not need the simulator.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.star import ParticleStar, read_star

GROUND_TRUTH_STAR = "ground_truth.star"

# A STAR without these is some other particle file (e.g. the set's particles.star), not a ground truth.
_REQUIRED_COLUMNS = ("rlnAnglePsi", "rlnCanonIsJunk", "rlnCanonJunkKind")


def read_ground_truth_star(path: str | Path) -> ParticleStar:
    """A simulated set's ground truth as a STAR file, from its folder or its ``ground_truth.star``; the junk
    labels typed (``rlnCanonIsJunk`` int, ``rlnCanonJunkKind`` str). Raises :class:`InputError` for a STAR
    that is not a ground truth."""
    path = Path(path)
    star_path = path / GROUND_TRUTH_STAR if path.is_dir() else path
    star = read_star(star_path)
    table = star.particles.copy()
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"not a simulation ground truth (missing {', '.join(missing)})", star_path)
    table["rlnCanonIsJunk"] = table["rlnCanonIsJunk"].astype(int)
    table["rlnCanonJunkKind"] = table["rlnCanonJunkKind"].astype(str)
    return star.with_particles(table)


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """The ground-truth particle table of a simulated set, from its folder or its ``ground_truth.star``."""
    return read_ground_truth_star(path).particles
