"""The particles as the searches read them: each CTF-weighted and whitened, in batches; kept in memory when they
fit, else read and prepared anew per pass; and the random subset the rounds run on."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from relion_canon.analysis.alignment_reference import noise_spectrum
from relion_canon.ctf import CtfParams
from relion_canon.geometry import ring_mean
from relion_canon.parallel import owned, world


class RingGrid(Protocol):
    """What preparing needs of the search's grid (:class:`~relion_canon.analysis.alignment.SearchGrid`, which
    imports this module): the box and each Fourier pixel's ring."""

    box: int
    rings: torch.Tensor
    n_rings: int


ImageBatches = Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]]
"""Called once per round; yields (indices (b,), images (b, B, B) float32) covering every particle once. Called
with sorted indices, it yields just those particles: a pass that needs a few reads only theirs."""

Prepared = tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]
"""One batch as the search reads it: (indices, CTF-weighted images, whitened CTF-weighted images, ring mean
of CTF²)."""


class PreparedParticles:
    """The particles CTF-weighted and whitened, as every round reads them: kept in memory when they fit in
    ``cache_bytes``, else read and prepared anew per pass; and the random ``subset`` the rounds run on, if
    any, always in memory. Reading them once on construction gives the noise spectrum they are whitened by.

    Under torchrun each process holds and yields only its own share of the particles (and of the subset), and
    every pass over them adds its results up across the processes (:mod:`relion_canon.parallel`).
    """

    def __init__(self, batches: ImageBatches, n_particles: int, ctf: CtfParams | None, pixel_size_A: np.ndarray,
                 grid: RingGrid, subset: np.ndarray | None, cache_bytes: int):
        self._batches, self._ctf, self._pixel_size_A, self._grid = batches, ctf, pixel_size_A, grid
        # This process's particles: all of them, or its share under torchrun.
        self._mine = None if world()[1] == 1 else owned(n_particles)
        n_mine = n_particles if self._mine is None else int(self._mine.sum())
        fits = n_mine * grid.box * grid.box * 8 <= cache_bytes
        in_subset = np.zeros(n_particles, dtype=bool)
        if subset is not None:
            in_subset[subset] = True
            if self._mine is not None:
                in_subset &= self._mine
        self._raw: list[tuple[np.ndarray, np.ndarray]] = []  # the particles as read, when they fit, until prepared
        raw_subset: list[tuple[np.ndarray, np.ndarray]] = []  # the subset's, when all do not fit
        largest = 0  # the largest batch read

        def read() -> Iterator[np.ndarray]:
            nonlocal largest
            for idx, images in self._read():
                largest = max(largest, len(idx))
                if fits:
                    self._raw.append((idx, images))
                elif subset is not None and in_subset[idx].any():
                    keep = in_subset[idx]
                    raw_subset.append((idx[keep], images[keep]))
                yield images

        self.noise = noise_spectrum(read(), n_particles, grid.rings, grid.n_rings)
        if subset is not None and fits:  # the subset's images are copied out of the full set's, kept for the passes
            raw_subset = [(idx[in_subset[idx]], images[in_subset[idx]]) for idx, images in self._raw]
        # Re-cut into batches as large as those read: a subset drawn from a million particles has a few in each
        # batch read, and every round would pay a batch's fixed cost thousands of times.
        self._subset = [self._prepare(idx, images) for idx, images in _rebatched(raw_subset, largest)]
        self._cache: list[Prepared] | None = [] if fits else None
        self.rows: np.ndarray = np.arange(n_particles) if subset is None else subset
        """The particles the rounds run on."""
        self.has_subset = subset is not None

    def _read(self, which: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The images of this process's particles, or of those among them that ``which`` ((N,) bool) picks."""
        if which is None and self._mine is None:
            return self._batches()
        if which is None:
            which = self._mine
        elif self._mine is not None:
            which = which & self._mine
        return self._batches(np.flatnonzero(which))

    def _prepare(self, idx: np.ndarray, images: np.ndarray) -> Prepared:
        return prepare(idx, images, self._ctf, self._pixel_size_A, self._grid, self.noise)

    def everyone(self) -> Iterator[Prepared]:
        """Every particle, prepared: from the cache once it is full."""
        if self._cache:
            yield from self._cache
            return
        source = _drain(self._raw) if self._cache is not None else self._read()
        for idx, images in source:
            item = self._prepare(idx, images)
            if self._cache is not None:
                self._cache.append(item)
            yield item

    def some(self, which: torch.Tensor) -> Iterator[Prepared]:
        """The particles ``which`` ((N,) bool, by row), prepared: from the cache when the particles fit in it,
        else only their images are read (a pass over a tenth of a million particles reads that tenth)."""
        if self._cache is not None:
            return only(self.everyone(), which)
        return (self._prepare(idx, images) for idx, images in self._read(which.numpy()))

    def for_rounds(self) -> Iterator[Prepared]:
        """The particles the rounds run on (``rows``), prepared."""
        return iter(self._subset) if self.has_subset else self.everyone()

    def drop_subset(self) -> None:
        """Free the subset's copies once the rounds are done: the passes read (or cache) every particle anew."""
        self._subset.clear()


def only(batches: Iterable[Prepared], which: torch.Tensor) -> Iterator[Prepared]:
    """The particles ``which`` ((N,) bool, by row) of ``batches``; batches without any are skipped."""
    for idx, weighted, whitened, ctf2 in batches:
        sel = which[torch.from_numpy(idx)]
        if bool(sel.all()):
            yield idx, weighted, whitened, ctf2
        elif bool(sel.any()):
            yield idx[sel.numpy()], weighted[sel], whitened[sel], ctf2[sel]


def _rebatched(parts: list[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (indices, images) ``parts`` joined and cut again into batches of ``size``, in the same order."""
    if not parts:
        return
    idx, images = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    parts.clear()  # the pieces, once joined, are copies no longer needed
    for start in range(0, len(idx), size):
        yield idx[start:start + size], images[start:start + size]


def _drain(items: list) -> Iterator:
    """Yield and drop the items of a list front to back, so that each can be freed once it is used."""
    items.reverse()
    while items:
        yield items.pop()


def prepare(idx: np.ndarray, images: np.ndarray, ctf: CtfParams | None, pixel_size_A: np.ndarray, grid: RingGrid,
            noise: torch.Tensor) -> Prepared:
    """One batch of particles ``idx`` (rows of ``ctf`` and ``pixel_size_A``) as the searches read them: CTF-weighted,
    CTF-weighted and whitened by ``noise`` (n_rings,), and the ring means of their CTF²."""
    spectra = torch.fft.rfft2(torch.from_numpy(images))
    if ctf is not None:
        c = torch.from_numpy(ctf.take(idx).ctf(grid.box, pixel_size_A[idx], rfft=True).astype(np.float32))
    else:
        c = torch.ones(len(idx), grid.box, grid.box // 2 + 1)
    weighted = spectra * c
    return (idx, torch.fft.irfft2(weighted, s=(grid.box, grid.box)),
            torch.fft.irfft2(weighted / noise[grid.rings], s=(grid.box, grid.box)),
            ring_mean(c**2, grid.rings, grid.n_rings))
