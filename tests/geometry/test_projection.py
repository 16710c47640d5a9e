"""relion_canon.geometry.projection: Euler angles back from RELION's matrices, and slices sampled only within a
radius (the simulator's projections against relion_project: tests/simulate/test_simulate_vs_relion.py)."""

from __future__ import annotations

import numpy as np
import torch

from relion_canon.geometry.projection import FourierProjector, euler_angles, euler_matrix, half_grid


def test_euler_angles_invert_euler_matrix():
    rng = np.random.default_rng(0)
    angles = np.c_[rng.uniform(-180, 180, 50), rng.uniform(1, 179, 50), rng.uniform(-180, 180, 50)]
    np.testing.assert_allclose(euler_angles(euler_matrix(*angles.T)), angles, atol=1e-9)
    # tilt 0: only rot + psi is defined, all of it goes into psi; tilt 180°: rot − psi, into psi as −(rot − psi).
    np.testing.assert_allclose(euler_angles(euler_matrix(30.0, 0.0, 40.0)), [0.0, 0.0, 70.0], atol=1e-9)
    upside = euler_angles(euler_matrix(30.0, 180.0, 40.0))
    np.testing.assert_allclose(euler_matrix(*upside), euler_matrix(30.0, 180.0, 40.0), atol=1e-9)
    assert upside[0] == 0.0


def test_slices_within_a_radius_are_the_full_slices_there_and_zero_beyond():
    rng = np.random.default_rng(1)
    projector = FourierProjector(rng.normal(size=(16, 16, 16)))
    matrices = euler_matrix(rng.uniform(-180, 180, 5), rng.uniform(0, 180, 5), rng.uniform(-180, 180, 5))
    full, low = projector.slices(matrices), projector.slices(matrices, max_ring=4.0)
    kx, ky = half_grid(16)
    inside = torch.from_numpy(np.hypot(kx, ky) <= 4.0)
    torch.testing.assert_close(low[:, inside], full[:, inside])
    assert torch.all(low[:, ~inside] == 0) and torch.any(full[:, ~inside] != 0)
