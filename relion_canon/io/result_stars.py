"""The job's particle STAR files, written a slice of rows at a time: every input block, column and row, the new
columns, and the selected and rejected parts. The input table is never copied whole (with a million particles
each copy is as large as the table), and each file is byte for byte what writing the whole table gives
(:func:`~relion_canon.io.star_stream.star_chunk_writer`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping

import numpy as np

from relion_canon.io.star import ParticleStar
from relion_canon.io.star_stream import star_chunk_writer

ROWS_PER_SLICE = 50_000


def write_result_stars(star: ParticleStar, columns: Mapping[str, np.ndarray], keep: np.ndarray, every: Path,
                       kept: Path, dropped: Path, rows_per_slice: int = ROWS_PER_SLICE) -> None:
    """``star`` with ``columns`` added (or replaced) into ``every``, and its rows where ``keep`` ((N,) bool) is
    true and false into ``kept`` and ``dropped``."""
    n = len(star)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {name}: {len(values)} values for {n} particles")
    with contextlib.ExitStack() as files:
        write_every, write_kept, write_dropped = (files.enter_context(star_chunk_writer(path))
                                                  for path in (every, kept, dropped))
        for start in range(0, n, rows_per_slice):
            rows = np.arange(start, min(start + rows_per_slice, n))
            part = star.subset(rows).with_columns({name: np.asarray(values)[rows] for name, values in columns.items()})
            write_every(part)
            write_kept(part.subset(keep[rows]))
            write_dropped(part.subset(~keep[rows]))
