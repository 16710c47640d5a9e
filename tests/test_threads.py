"""cpu_threads bounds torch's pool and every BLAS/OpenMP pool numpy and scikit-learn use, then restores torch's."""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_info

from relion_canon.threads import cpu_threads


def test_bounds_torch_and_blas_then_restores_torch():
    np.ones((4, 4)) @ np.ones((4, 4))  # the BLAS is loaded and visible to threadpoolctl
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
        pools = threadpool_info()
        assert pools and all(p["num_threads"] == 1 for p in pools), pools
    assert torch.get_num_threads() == before


def test_none_leaves_everything_as_it_is():
    before = (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()])
    with cpu_threads(None):
        assert (torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]) == before
