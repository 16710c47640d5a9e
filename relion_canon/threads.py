"""How many CPU threads the numerical libraries may use: torch's pool and the BLAS/OpenMP pools behind numpy,
scipy and scikit-learn."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Within the block, torch and every BLAS/OpenMP pool use at most ``threads`` threads (None: as they are).

    Setting torch's alone is not enough: OpenBLAS starts one thread per core, and while another program
    holds the cores (RELION next to an External job) its threads wait on each other (the measured cost is in
    ``benchmarks/README.md``, "Figures behind the defaults").
    """
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)
