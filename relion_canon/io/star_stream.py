"""A particle STAR file read, and written, a slice of particle rows at a time: memory stays flat however many
particles the file lists (a 1,000,000-row table parsed at once holds over 1 GB).

Each slice is read by :func:`read_star` itself, from a scratch file holding the input's other blocks, the
particle loop's header and that slice's rows, so a slice is checked exactly as a whole file is; errors name
the input file and the row as counted in the whole loop. A file whose particle loop fits in one slice is
simply read whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.star import (
    PARTICLE_BLOCK_NAMES,
    VERSION_31,
    ParticleStar,
    read_star,
)
from relion_canon.io.star_writer import (
    BLOCK_END,
    FILE_HEADER,
    block_text,
    loop_header_text,
    loop_rows_text,
    version_text,
)

# Rows per slice: parsing costs ~1.3 KB per row at its peak, so 20,000 rows add ~25 MB.
CHUNK_ROWS = 20_000


@dataclass
class _Loop:
    name: str
    labels: list[str]
    rows_start: int = -1  # byte offset of the first data row
    rows_end: int = -1  # byte offset of the line that ends the loop (next data_ or end of file)
    n_rows: int = 0
    cuts: list[int] = field(default_factory=list)  # byte offsets where slices begin


def _scan(path: Path, rows: int) -> list[_Loop] | None:
    """Every loop block of the file with its row count and slice offsets; None when the file is not plain
    enough to slice safely (then it is read whole, which reports whatever is wrong with it)."""
    loops: list[_Loop] = []
    block: str | None = None
    current: _Loop | None = None
    pos = 0
    with open(path, "rb") as fh:
        for raw in fh:
            start, pos = pos, pos + len(raw)
            if (not raw.isascii() and not _utf8(raw)) or b"\r" in raw[:-2]:
                # Text that is not UTF-8, or a lone CR: read whole, so the error gives the whole file's offsets.
                return None
            line = raw.strip()
            if raw.startswith(b"data_"):
                if current is not None:
                    current.rows_end = start
                    current = None
                try:
                    block = raw[5:].strip().decode("utf-8")
                except UnicodeDecodeError:
                    return None
                continue
            if current is not None and current.rows_start < 0 and raw.startswith(b"_"):
                current.labels.append(raw.split()[0][1:].decode("utf-8", "replace"))
                continue
            if line.startswith(b"loop_"):
                if block is None or current is not None:
                    return None  # a loop outside a block, or a second loop in one block
                current = _Loop(block, [])
                loops.append(current)
                continue
            if current is None or not line or line.startswith(b"#"):
                continue
            if current.rows_start < 0:
                current.rows_start = start
            if current.n_rows % rows == 0:
                current.cuts.append(start)
            current.n_rows += 1
    if current is not None:
        current.rows_end = pos
    names = [loop.name for loop in loops]
    if len(set(names)) != len(names):
        return None
    return loops


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _particle_loop(loops: list[_Loop]) -> _Loop | None:
    """The particle loop, chosen as :func:`read_star` chooses it."""
    for name in PARTICLE_BLOCK_NAMES:
        for loop in loops:
            if loop.name == name:
                return loop
    for loop in loops:
        if "rlnImageName" in loop.labels:
            return loop
    return None


def count_particles(path: str | Path) -> int | None:
    """Rows of the particle loop, counted without parsing the table (None when the layout is unusual)."""
    loops = _scan(Path(path), CHUNK_ROWS)
    loop = None if loops is None else _particle_loop(loops)
    return None if loop is None else loop.n_rows


def iter_star_chunks(
    path: str | Path, scratch_dir: str | Path, rows: int | None = None
) -> Iterator[tuple[int, ParticleStar]]:
    """(offset, star) for consecutive slices of the particle rows, in file order: ``star`` holds rows
    ``offset + 1 .. offset + len(star)`` and every other block of the file. ``scratch_dir`` takes one
    short-lived file at a time (put it inside the job's output folder)."""
    path = Path(path)
    rows = rows or CHUNK_ROWS
    if not path.is_file() or path.stat().st_size == 0:
        yield 0, read_star(path)  # raises the usual error
        return
    loops = _scan(path, rows)
    loop = None if loops is None else _particle_loop(loops)
    if loop is None or loop.n_rows <= rows:
        yield 0, read_star(path)
        return
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".slice.star", dir=scratch_dir)
    os.close(fd)
    scratch = Path(name)
    size = path.stat().st_size
    bounds = [*loop.cuts, loop.rows_end]
    try:
        with open(path, "rb") as src:
            head = _read_range(src, 0, loop.rows_start)
            tail = _read_range(src, loop.rows_end, size)
            for k in range(len(loop.cuts)):
                with open(scratch, "wb") as out:
                    out.write(head)
                    out.write(_read_range(src, bounds[k], bounds[k + 1]))
                    out.write(tail)
                offset = k * rows
                expected = min(rows, loop.n_rows - offset)
                try:
                    star = read_star(scratch)
                except InputError:
                    star = None
                if star is None or len(star) != expected:
                    # A slice read differently from the whole file (pandas sizes a loop by its first line; a stray
                    # quote joins lines): from here on the file is read whole, so its error, or its table, is
                    # exactly what read_star gives.
                    whole = read_star(path)
                    for start in range(offset, len(whole), rows):
                        yield start, whole.subset(np.arange(start, min(start + rows, len(whole))))
                    return
                star.path = path
                yield offset, star
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


@contextlib.contextmanager
def whole_file_rows(path: str | Path, offset: int) -> Iterator[None]:
    """Report rows of errors raised while working on a slice that starts after ``offset`` rows as rows of the
    whole file."""
    try:
        yield
    except InputError as exc:
        if offset and exc.row is not None and exc.file == str(path):
            raise InputError(exc.message, exc.file, exc.row + offset) from exc
        raise


def _read_range(fh: IO[bytes], start: int, stop: int) -> bytes:
    fh.seek(start)
    return fh.read(max(0, stop - start))


@contextlib.contextmanager
def star_chunk_writer(path: str | Path, version: int | None = None) -> Iterator[Callable[[ParticleStar], None]]:
    """Yield ``write(star)``, to be called with consecutive slices of one particle table (what
    :func:`iter_star_chunks` yields, with columns added). The file is byte for byte what :func:`write_star`
    writes for the whole table when the slices agree in column types, and appears only once complete."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        writer = _ChunkWriter(fh, Path(path), version)
        yield writer.write
        writer.finish()


class _ChunkWriter:
    def __init__(self, fh: IO[str], path: Path, version: int | None):
        self.fh, self.path, self.version = fh, path, version
        self.columns: list[str] | None = None
        self.block = ""
        self.after: list[tuple[str, pd.DataFrame | dict]] = []

    def write(self, star: ParticleStar) -> None:
        table = star.particles
        if self.columns is None:
            if self.version is None and (star.version is not None or star.optics_table is not None):
                self.version = star.version if star.version is not None else VERSION_31
            self.fh.write(FILE_HEADER)
            names = list(star.blocks)
            here = names.index(star.particles_block)
            for name in names[:here]:
                self._block(name, star.blocks[name])
            self.block, self.columns = star.particles_block, list(table.columns)
            self.after = [(name, star.blocks[name]) for name in names[here + 1 :]]
            self.fh.write(version_text(self.version) + loop_header_text(self.block, self.columns))
        elif list(table.columns) != self.columns or star.particles_block != self.block:
            raise ValueError(f"{self.path}: a slice's columns differ from the first slice's")
        # The loop's closing blank lines come in finish().
        self.fh.write(loop_rows_text(table))

    def finish(self) -> None:
        if self.columns is None:
            raise ValueError(f"{self.path}: no particles were written")
        self.fh.write(BLOCK_END)
        for name, block in self.after:
            self._block(name, block)

    def _block(self, name: str, block: pd.DataFrame | dict) -> None:
        self.fh.write(version_text(self.version) + block_text(name, block))
