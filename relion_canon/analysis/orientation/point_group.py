"""Point groups of a reference map in RELION's conventions, and distances between orientations under them.

RELION's symmetry library puts the n-fold axis of Cn and Dn along z and, for Dn, a two-fold along x
(``src/symmetries.cpp``). A map with symmetry G satisfies V(S x) = V(x) for S in G, so the projection at
orientation A (RELION's ``Euler_angles2matrix``) equals the projection at A·S: orientations are equal modulo
right multiplication by G, and a projection direction d (A's third row) modulo d → Sᵀd.

T, O and I are not offered: their axes follow RELION's per-group settings (I1 … I4, T and O orientations) and a
wrong setting would silently give wrong priors; a map of such symmetry can be searched as C1 (slower, same result).
"""

from __future__ import annotations

import re

import numpy as np

_SYMMETRY = re.compile(r"([CD])(\d+)")
MAX_ORDER = 60


def symmetry_problem(value: str) -> str | None:
    """Why ``value`` is not a point group this job handles (C1, Cn, Dn), or None."""
    m = _SYMMETRY.fullmatch(str(value).strip().upper())
    if m is None:
        hint = " (T, O and I: use C1)" if str(value).strip().upper()[:1] in ("T", "O", "I") else ""
        return f"{value!r} is not a point group this job handles: C1, Cn or Dn, e.g. C1, C4, D2{hint}"
    if not 1 <= int(m.group(2)) <= MAX_ORDER:
        return f"{value!r}: the order must be between 1 and {MAX_ORDER}"
    return None


def normalise_symmetry(value: str) -> str:
    """The group's name as RELION writes it (``c4`` → ``C4``)."""
    return str(value).strip().upper()


def _about_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def group_matrices(symmetry: str) -> np.ndarray:
    """(|G|, 3, 3) the rotations of ``symmetry`` (identity first); ValueError for a group not handled."""
    problem = symmetry_problem(symmetry)
    if problem is not None:
        raise ValueError(problem)
    m = _SYMMETRY.fullmatch(normalise_symmetry(symmetry))
    kind, n = m.group(1), int(m.group(2))
    cyclic = [_about_z(2 * np.pi * k / n) for k in range(n)]
    if kind == "C":
        return np.stack(cyclic)
    flip_x = np.diag([1.0, -1.0, -1.0])  # the two-fold about x
    return np.stack(cyclic + [c @ flip_x for c in cyclic])


def directions(rot_deg: np.ndarray, tilt_deg: np.ndarray) -> np.ndarray:
    """(n, 3) unit projection directions (the third row of RELION's Euler matrix) of (rot, tilt)."""
    rot, tilt = np.deg2rad(np.asarray(rot_deg, dtype=np.float64)), np.deg2rad(np.asarray(tilt_deg, dtype=np.float64))
    return np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=-1)


def rot_tilt(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees, rot in [−180, 180), tilt in [0, 180], of (n, 3) directions."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    tilt = np.rad2deg(np.arccos(np.clip(d[..., 2], -1.0, 1.0)))
    rot = np.rad2deg(np.arctan2(d[..., 1], d[..., 0]))
    return (rot + 180.0) % 360.0 - 180.0, tilt


# A generic direction: the asymmetric unit is the set of directions closer to it than any of their symmetry
# mates, a Voronoi cell of its orbit, which tiles the sphere for any group.
_ANCHOR = np.array([0.31, 0.17, 0.93]) / np.linalg.norm([0.31, 0.17, 0.93])


def in_asymmetric_unit(direction: np.ndarray, group: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """(n,) bool: which of the (n, 3) directions are their orbit's representative (ties on the boundary kept)."""
    mates = np.einsum("gji,nj->ngi", group, np.asarray(direction, dtype=np.float64))  # Sᵀ d
    closeness = mates @ _ANCHOR
    return closeness[:, 0] >= closeness.max(axis=1) - tolerance


def orientation_distance_deg(a: np.ndarray, b: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices (…, 3, 3) ``a`` and ``b``, the smallest over b·S."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mates = b[..., None, :, :] @ (np.eye(3)[None] if group is None else group)
    trace = np.einsum("...ij,...gij->...g", a, mates)
    return np.rad2deg(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))).min(axis=-1)


def direction_distance_deg(a: np.ndarray, b: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Angle (degrees) between projection directions (…, 3) ``a`` and ``b``, the smallest over Sᵀb."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    group = np.eye(3)[None] if group is None else group
    mates = np.einsum("gji,...j->...gi", group, b)
    cosine = np.clip(np.einsum("...i,...gi->...g", a, mates), -1.0, 1.0)
    return np.rad2deg(np.arccos(cosine.max(axis=-1)))
