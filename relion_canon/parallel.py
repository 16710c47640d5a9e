"""The job's processes under torchrun: which particles this process reads in a pass, and the sums and
per-particle results that every process must hold alike after it.

Every pass over particles reads this process's :func:`share` only; what it adds up is :func:`summed` across the
processes, and what it finds per particle is :func:`merged` (each particle's from the process that read it),
so that after every pass each process holds the whole state and takes the same decisions from it (k-means,
merges, splits, the junk rule) as one process would. A single process (no torchrun) is a world of one: its
share is every particle, and every function here gives its input back unchanged.

Reductions run through ``torch.distributed`` on the CPU tensors the passes keep their state in: gloo
(with ``cpu:gloo,cuda:nccl``, see :func:`~relion_canon.train.devices.distributed`, when GPUs train).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes the job's results and log lines: rank 0 (the only process outside torchrun).
    Before the process group starts, torchrun's ``RANK`` says it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def share(n: int) -> np.ndarray:
    """This process's rows of ``n`` (sorted): a contiguous block, so that each process reads its part of the
    stacks in order."""
    rank, size = world()
    return np.arange(n * rank // size, n * (rank + 1) // size)


def owned(n: int) -> np.ndarray:
    """(n,) bool: the rows of :func:`share`."""
    mask = np.zeros(n, dtype=bool)
    mask[share(n)] = True
    return mask


def summed(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes, in place (and returned)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def anywhere(touched: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows some process's pass ``touched`` ((N,) bool on this process)."""
    return summed(touched.to(torch.int32)) > 0 if world()[1] > 1 else touched


def merged(new: torch.Tensor, old: torch.Tensor, touched: torch.Tensor,
           touched_anywhere: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, ``new`` of the process whose pass ``touched`` it ((N,) bool), else ``old``: rows are never read by
    two processes, so each is the one process's value plus zeros, exactly. ``touched_anywhere``:
    :func:`anywhere` of ``touched``, when several arrays of one pass are merged."""
    if world()[1] == 1:
        return new
    if touched_anywhere is None:
        touched_anywhere = anywhere(touched)
    shape = (-1, *([1] * (new.dim() - 1)))
    values = summed(torch.where(touched.reshape(shape), new, torch.zeros((), dtype=new.dtype)))
    return torch.where(touched_anywhere.reshape(shape), values, old)


def merged_rows(values: np.ndarray, touched: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """:func:`merged` for a numpy array whose rows ``touched`` this process filled; rows none filled get ``fill``."""
    if world()[1] == 1:
        return values
    old = torch.full(values.shape, fill, dtype=torch.float64)
    return merged(torch.from_numpy(np.asarray(values, dtype=np.float64)), old, torch.from_numpy(touched)).numpy()


def gathered(rows: np.ndarray, values: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Every process's (``rows`` (n,), ``values`` (n, ...)) joined, in the order of the rows: what one process
    reading every row in order would hold."""
    if world()[1] == 1:
        return rows, values
    size = world()[1]
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([len(rows)], dtype=torch.int64))
    longest = max(int(c) for c in counts)
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype)
    padded[: len(rows)] = values
    padded_rows = torch.full((longest,), -1, dtype=torch.int64)
    padded_rows[: len(rows)] = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    all_values = [torch.empty_like(padded) for _ in range(size)]
    all_rows = [torch.empty_like(padded_rows) for _ in range(size)]
    dist.all_gather(all_values, padded)
    dist.all_gather(all_rows, padded_rows)
    joined_rows = torch.cat([r[: int(c)] for r, c in zip(all_rows, counts)])
    joined = torch.cat([v[: int(c)] for v, c in zip(all_values, counts)])
    order = torch.argsort(joined_rows, stable=True)
    return joined_rows[order].numpy(), joined[order]


def barrier() -> None:
    """Wait until every process gets here (e.g. for a file rank 0 writes)."""
    if world()[1] > 1:
        dist.barrier()
