"""Grids of projection directions: the whole sphere (a Fibonacci lattice, nearly even at any spacing) reduced to
a point group's asymmetric unit, and small patches about one direction for local refinement."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.orientation.point_group import in_asymmetric_unit


def sphere_grid(step_deg: float, group: np.ndarray) -> np.ndarray:
    """(n, 3) unit directions about ``step_deg`` apart covering the asymmetric unit of ``group``.

    The whole sphere is covered, not a hemisphere: a mirrored projection is the projection along the opposite
    direction (diag(−1, 1, −1)·A is a proper rotation, and the z flip does not change a line integral), so
    searching every direction accounts for mirrors."""
    n = int(np.ceil(4 * np.pi / np.deg2rad(step_deg) ** 2))
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5**0.5) * k
    r = np.sqrt(1.0 - z**2)
    grid = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)
    return grid[in_asymmetric_unit(grid, group)]


def patch(centre: np.ndarray, step_deg: float, radius_deg: float) -> np.ndarray:
    """(m, 3) unit directions on a square grid of ``step_deg`` in the tangent plane of ``centre`` (3,), within
    ``radius_deg`` of it; the centre itself first."""
    c = np.asarray(centre, dtype=np.float64)
    c = c / np.linalg.norm(c)
    helper = np.array([1.0, 0.0, 0.0]) if abs(c[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(c, helper)
    u /= np.linalg.norm(u)
    v = np.cross(c, u)
    m = int(np.ceil(radius_deg / step_deg))
    a, b = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    a, b = a.ravel() * step_deg, b.ravel() * step_deg
    keep = a**2 + b**2 <= radius_deg**2 + 1e-9
    a, b = np.deg2rad(a[keep]), np.deg2rad(b[keep])
    order = np.argsort(a**2 + b**2, kind="stable")
    points = c[None] + np.tan(a[order])[:, None] * u[None] + np.tan(b[order])[:, None] * v[None]
    return points / np.linalg.norm(points, axis=-1, keepdims=True)
