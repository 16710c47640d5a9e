"""Feeding models: a STAR file's particles as preprocessed tensor batches, streamed from disk.

``ParticleBatches[indices]`` returns a whole :data:`~relion_canon.models.base.Batch`; a ``DataLoader`` with
``batch_size=None`` over a batch sampler then reads each batch with one grouped, memory-mapped read, in
worker processes when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from relion_canon.ctf import CtfParams
from relion_canon.errors import InputError
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import ParticleStar
from relion_canon.preprocess import PreprocessConfig, Preprocessor


@dataclass
class DataSpec:
    """What the model needs from the particles besides images."""

    labels: bool = False  # "psi" from the STAR's rlnAnglePsi
    origins: bool = False  # "origin" from rlnOriginX/YAngst, in pixels at the model's box
    ctf: bool = False  # "ctf" for models that apply the CTF in their decoder


class ParticleBatches(Dataset):
    """Preprocessed particles of one STAR file; index it with a list of particle rows to get a batch."""

    def __init__(
        self,
        star: ParticleStar,
        preprocess: PreprocessConfig,
        spec: DataSpec = DataSpec(),
        project_dir=None,
        data_dir=None,
        source: ParticleSource | None = None,
    ):
        self.star = star
        # Opening a source parses every stack's header once; callers that already have one pass it in.
        self.source = source or ParticleSource.from_star(star, project_dir, data_dir)
        optics = star.optics()
        optics.require(star.path, "pixel_size")
        self._ctf_all: CtfParams | None = star.ctf_params() if preprocess.phase_flip else None
        assert self.source.box is not None
        self.preprocessor = Preprocessor(preprocess, self.source.box, optics.pixel_size, self._ctf_all)
        self.set_spec(spec)

    def set_spec(self, spec: DataSpec) -> None:
        """Choose what batches carry besides images (known only once the model is built)."""
        if spec.ctf and self.preprocessor.config.phase_flip:
            raise ValueError("choose either phase flipping or a CTF in the decoder, not both")
        if spec.ctf and self._ctf_all is None:
            self._ctf_all = self.star.ctf_params()
        self.spec = spec
        self.psi_rad = _labels(self.star) if spec.labels else None
        self.origin_px = (
            (self.star.origins_angstrom() / self.pixel_size[:, None]).astype(np.float32) if spec.origins else None
        )

    @property
    def box(self) -> int:
        return self.preprocessor.out_box

    @property
    def pixel_size(self) -> np.ndarray:
        """Per-particle pixel size (Å) of the images the model sees."""
        return self.preprocessor.out_pixel_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = self.preprocessor(self.source.read(idx), idx)
        batch = {"image": torch.from_numpy(images).unsqueeze(1), "index": torch.from_numpy(idx)}
        if self.psi_rad is not None:
            batch["psi"] = torch.from_numpy(self.psi_rad[idx])
        if self.origin_px is not None:
            batch["origin"] = torch.from_numpy(self.origin_px[idx])
        if self.spec.ctf:
            ctf = self._ctf_all.take(idx).ctf(self.box, self.pixel_size[idx])  # type: ignore[union-attr]
            batch["ctf"] = torch.from_numpy(ctf.astype(np.float32))
        return batch


def _labels(star: ParticleStar) -> np.ndarray:
    p = star.particles
    if "rlnAnglePsi" not in p.columns:
        raise InputError("training with angle labels needs rlnAnglePsi (from Class2D or Refine3D)", star.path)
    psi = p["rlnAnglePsi"].to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(psi))
    if bad.size:
        raise InputError("rlnAnglePsi is not a number", star.path, int(bad[0]) + 1)
    return np.deg2rad(psi).astype(np.float32)


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch, drawn from (seed, epoch) alone, and this rank's share of it.

    Deriving the order from the epoch number (not from a running generator) is what makes a resumed run
    see exactly the batches an uninterrupted one would. Under ``torch.distributed`` every rank gets an
    equal, disjoint share (the permutation is padded by wrapping, as ``DistributedSampler`` does).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self):
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = len(self) * self.world_size
        order = np.resize(order, total)  # wrap-around padding so every rank has the same count
        return iter(order[self.rank : total : self.world_size].tolist())


def make_loader(dataset: ParticleBatches, sampler: Sampler | Iterable[int], batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    """Batches of ``batch_size`` rows read by ``workers`` processes (0: in this process)."""
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
