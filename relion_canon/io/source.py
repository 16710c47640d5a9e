"""Lazy random access to the particle images a STAR file names.

Each stack's header is read once, with ``mrcfile`` (which validates it); images are then read with
positioned reads (``os.preadv``) straight into the batch array, one read per run of consecutive images.
Nothing stays mapped into the process, so the RSS of a pass does not grow with the number of particles,
and opening a stack costs one ``open``. Open files are kept in a small LRU so millions of particles spread
over tens of thousands of stacks never exhaust file handles.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.imagename import parse_image_name, resolve_path
from relion_canon.io.mrc import open_stack, stack_shape
from relion_canon.io.star import ParticleStar

MAX_OPEN_STACKS = 512  # well under the usual 1024 open-file limit; reopening costs a syscall each time
_NATIVE_FLOAT32 = np.dtype(np.float32).str  # '<f4' on little-endian machines


@dataclass(frozen=True)
class StackInfo:
    name: str  # as written in the STAR file
    path: Path | None  # resolved file, None when it does not exist
    n_images: int  # images in the file (0 when unreadable)
    box: int | None  # nx (== ny) of the file
    first_row: int  # first 1-based STAR row that names it
    offset: int = 0  # byte offset of the first image (header + extended header)
    dtype: str | None = None  # numpy dtype of the pixels, byte order included (e.g. '<f4')
    ny: int | None = None


class ParticleSource:
    """Images of N particles, read on demand; ``source[i]`` / ``source.read(indices)`` give float32 arrays.

    Build one with :meth:`from_star` or :meth:`from_stack`. Construction checks every stack once
    (exists, long enough, square, one box size) and collects the problems in :attr:`problems`; with
    ``strict=True`` (the default) the first problem is raised as an :class:`InputError`.
    """

    def __init__(
        self,
        stack_names: Sequence[str],
        stack_of: np.ndarray,
        index: np.ndarray,
        origin: str | Path,
        star_dir: Path | None = None,
        project_dir: Path | None = None,
        data_dir: Path | None = None,
        strict: bool = True,
        check_finite: bool = True,
    ):
        self.origin = str(origin)  # the file users named, for error messages
        self.stack_of = np.asarray(stack_of, dtype=np.int32)
        self.index = np.asarray(index, dtype=np.int64)
        self.check_finite = check_finite
        self.problems: list[InputError] = []
        self.stacks: list[StackInfo] = []
        self._handles: OrderedDict[int, object] = OrderedDict()  # stack id -> open file

        first_rows = _first_occurrence(self.stack_of, len(stack_names))
        for sid, name in enumerate(stack_names):
            self.stacks.append(self._inspect(name, first_rows[sid], star_dir, project_dir, data_dir))
        self.box = self._check_boxes()
        self._check_indices()
        if strict and self.problems:
            raise self.problems[0]

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_star(
        cls,
        star: ParticleStar,
        project_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        strict: bool = True,
        check_finite: bool = True,
    ) -> "ParticleSource":
        names = star.image_names
        stack_ids: dict[str, int] = {}
        stack_of = np.empty(len(names), np.int32)
        index = np.empty(len(names), np.int64)
        for row, name in enumerate(names):
            ref = parse_image_name(name, star.path, row + 1)
            stack_of[row] = stack_ids.setdefault(ref.path, len(stack_ids))
            index[row] = ref.index
        return cls(
            list(stack_ids),
            stack_of,
            index,
            origin=star.path,
            star_dir=star.path.parent,
            project_dir=Path(project_dir) if project_dir else None,
            data_dir=Path(data_dir) if data_dir else None,
            strict=strict,
            check_finite=check_finite,
        )

    @classmethod
    def from_stack(cls, path: str | Path, strict: bool = True, check_finite: bool = True) -> "ParticleSource":
        """Every image of one MRC stack, in order."""
        path = Path(path)
        m = open_stack(path)
        try:
            n = stack_shape(m)[0]
        finally:
            m.close()
        return cls(
            [str(path.resolve())], np.zeros(n, np.int32), np.arange(n), origin=path, strict=strict, check_finite=check_finite
        )

    def _inspect(self, name: str, first_row: int, star_dir, project_dir, data_dir) -> StackInfo:
        path = resolve_path(name, star_dir, project_dir, data_dir)
        if path is None:
            self.problems.append(InputError(f"image stack {name} not found", self.origin, first_row))
            return StackInfo(name, None, 0, None, first_row)
        try:
            m = open_stack(path)
        except InputError as exc:
            self.problems.append(InputError(f"{exc} (named in {self.origin})", None, None))
            return StackInfo(name, None, 0, None, first_row)
        try:
            n, ny, nx = stack_shape(m)
            offset = int(m.header.nbytes) + int(m.header.nsymbt)
            dtype = m.data.dtype.str
        finally:
            m.close()
        if ny != nx:
            self.problems.append(InputError(f"images are {nx}x{ny}, not square", path))
        return StackInfo(name, path, n, nx, first_row, offset, dtype, ny)

    def _check_boxes(self) -> int | None:
        boxes = {s.box for s in self.stacks if s.box is not None}
        if len(boxes) > 1:
            example = {}
            for s in self.stacks:
                if s.box is not None:
                    example.setdefault(s.box, s)
            desc = "; ".join(f"{s.name} is {b} px (row {s.first_row})" for b, s in sorted(example.items()))
            self.problems.append(
                InputError(f"mixed box sizes ({desc}): re-extract or resample to one box first", self.origin)
            )
        return min(boxes) if boxes else None

    def _check_indices(self) -> None:
        lengths = np.array([s.n_images if s.path is not None else np.iinfo(np.int64).max for s in self.stacks])
        if len(lengths) == 0:
            return
        beyond = np.flatnonzero(self.index >= lengths[self.stack_of])
        if beyond.size:
            row = int(beyond[0])
            s = self.stacks[self.stack_of[row]]
            more = f" (and {beyond.size - 1} more rows)" if beyond.size > 1 else ""
            self.problems.append(
                InputError(
                    f"image {self.index[row] + 1}@{s.name} is beyond the end of the stack ({s.n_images} images){more}",
                    self.origin,
                    row + 1,
                )
            )

    # --- access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _file(self, sid: int):
        fh = self._handles.get(sid)
        if fh is None:
            path = self.stacks[sid].path
            if path is None:
                raise InputError(f"image stack {self.stacks[sid].name} not found", self.origin, self.stacks[sid].first_row)
            fh = open(path, "rb", buffering=0)
            self._handles[sid] = fh
            if len(self._handles) > MAX_OPEN_STACKS:
                _, old = self._handles.popitem(last=False)
                old.close()
        else:
            self._handles.move_to_end(sid)
        return fh

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of the given particles, (B, box, box) float32, in the order asked for."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            idx = idx.reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"particle index out of range for {len(self)} particles")
        idx = idx % max(len(self), 1)
        if self.box is None:
            raise InputError("no readable image stacks", self.origin)
        out = np.empty((idx.size, self.box, self.box), np.float32)
        if idx.size == 0:
            return out
        # By stack, then file order; one positioned read per run of images that are consecutive both in
        # the file and in ``out`` (a whole sequential batch is one read, straight into ``out``).
        order = np.lexsort((self.index[idx], self.stack_of[idx]))
        sids = self.stack_of[idx[order]]
        frames = self.index[idx[order]]
        first = np.flatnonzero(np.r_[True, (np.diff(sids) != 0) | (np.diff(frames) != 1) | (np.diff(order) != 1)])
        counts = np.diff(np.r_[first, idx.size])
        image_bytes = self.box * self.box * 4
        out_bytes = memoryview(out.reshape(-1).view(np.uint8))
        for sid, frame, row, k in zip(sids[first].tolist(), frames[first].tolist(), order[first].tolist(), counts.tolist()):
            fh = self._file(sid)
            info = self.stacks[sid]
            if info.box != self.box or info.ny != self.box:
                raise InputError(f"images are {info.box}x{info.ny}, not {self.box}x{self.box}", info.path)
            if info.dtype == _NATIVE_FLOAT32:  # straight into out
                view = out_bytes[row * image_bytes : (row + k) * image_bytes]
                _read_exact(fh, view, info.offset + frame * image_bytes, info.path)
            else:  # other modes or byte order: read as stored, convert
                tmp = np.empty((k, self.box, self.box), info.dtype)
                _read_exact(fh, memoryview(tmp).cast("B"), info.offset + frame * tmp[0].nbytes, info.path)
                out[row : row + k] = tmp
        if self.check_finite and not np.isfinite(out).all():
            bad = int(idx[np.flatnonzero(~np.isfinite(out).reshape(len(idx), -1).all(axis=1))[0]])
            s = self.stacks[self.stack_of[bad]]
            raise InputError(f"image {self.index[bad] + 1}@{s.name} contains NaN or infinite pixels", self.origin, bad + 1)
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read([i])[0]

    def iter_batches(self, batch_size: int, indices: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, images) in batches, in the given order (default: file order)."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(order), batch_size):
            sel = order[start : start + batch_size]
            yield sel, self.read(sel)

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def __enter__(self) -> "ParticleSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Worker processes (DataLoader) get a copy without open handles and open their own.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _read_exact(fh, view: memoryview, offset: int, path) -> None:
    """Fill ``view`` from byte ``offset`` of the open file (positioned reads share no file position)."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fh.fileno(), [view[done:]], offset + done)
        else:  # Windows
            fh.seek(offset + done)
            got = fh.readinto(view[done:])
        if not got:
            raise InputError(f"unexpected end of file at byte {offset + done} (truncated while in use?)", path)
        done += got


def _first_occurrence(stack_of: np.ndarray, n_stacks: int) -> list[int]:
    """1-based first row naming each stack."""
    first = np.full(n_stacks, -1, np.int64)
    uniq, pos = np.unique(stack_of, return_index=True)
    first[uniq] = pos
    return (first + 1).tolist()
