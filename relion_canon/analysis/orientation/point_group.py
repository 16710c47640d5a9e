"""Point groups of a reference map in RELION's conventions, and distances between orientations under them.

The axes are those of RELION's symmetry library (``src/symmetries.cpp``, ``SymList::fill_symmetry_class``):
Cn and Dn have the n-fold axis along z and, for Dn, a two-fold along x; T a three-fold along z and a two-fold
along (0, 0.816496, 0.577350); O a three-fold along (1, 1, 1)/√3 and a four-fold along z; I (= I2) a two-fold
along z, a five-fold along (0.525731, 0, 0.850651) and a three-fold along (0, 0.356822, 0.934172); I1, I3 and I4
RELION's other icosahedral settings. Each group is the closure of those generators. A map with symmetry G
satisfies V(S x) = V(x) for S in G, so the projection at orientation A (RELION's ``Euler_angles2matrix``)
equals the projection at A·S: orientations are equal modulo right multiplication by G, and a projection
direction d (A's third row) modulo d → Sᵀd.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_SYMMETRY = re.compile(r"([CD])(\d+)|(T|O|I[1-4]?)")
MAX_ORDER = 60
# RELION's generators (fold, axis) of the polyhedral groups, as ``fill_symmetry_class`` writes them.
_GENERATORS: dict[str, tuple[tuple[int, tuple[float, float, float]], ...]] = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))),
    "O": ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))),
    "I": ((2, (0.0, 0.0, 1.0)), (5, (0.525731114, 0.0, 0.850650807)), (3, (0.0, 0.356822076, 0.934172364))),
    "I1": ((2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)),
           (3, (0.9341723640, 0.3568220765, 0.0))),
    "I3": ((2, (-0.5257311143, 0.0, 0.8506508070)), (5, (0.0, 0.0, 1.0)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))),
    "I4": ((2, (0.5257311143, 0.0, 0.8506508070)), (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))),
}
_GENERATORS["I2"] = _GENERATORS["I"]
GROUP_ORDERS = {"T": 12, "O": 24, "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def symmetry_problem(value: str) -> str | None:
    """Why ``value`` is not a point group this job handles (C1, Cn, Dn, T, O, I, I1-I4), or None."""
    m = _SYMMETRY.fullmatch(str(value).strip().upper())
    if m is None:
        return (f"{value!r} is not a point group this job handles: C1, Cn, Dn, T, O or I (I1-I4: RELION's "
                f"icosahedral settings), e.g. C1, C4, D2, O")
    if m.group(2) is not None and not 1 <= int(m.group(2)) <= MAX_ORDER:
        return f"{value!r}: the order must be between 1 and {MAX_ORDER}"
    return None


def normalise_symmetry(value: str) -> str:
    """The group's name as RELION writes it (``c4`` → ``C4``)."""
    return str(value).strip().upper()


def _about_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _about_axis(axis: tuple[float, float, float], angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation by ``angle_rad`` about ``axis`` (normalised here: RELION's axes have 6 digits)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def _closure(generators: list[np.ndarray]) -> np.ndarray:
    """Every product of ``generators``: (|G|, 3, 3), identity first. RELION's axes are given to 6-10 digits,
    so products are matched to 1e-4, and each element is snapped to the nearest rotation (SVD)."""
    group = [np.eye(3)]
    frontier = list(group)
    while frontier:
        found = []
        for a in frontier:
            for g in generators:
                u, _, vt = np.linalg.svd(a @ g)
                candidate = u @ vt
                if not any(np.abs(candidate - b).max() < 1e-4 for b in group + found):
                    found.append(candidate)
        group += found
        frontier = found
    return np.stack(group)


@lru_cache(maxsize=None)
def _polyhedral(name: str) -> np.ndarray:
    group = _closure([_about_axis(axis, 2 * np.pi / fold) for fold, axis in _GENERATORS[name]])
    if len(group) != GROUP_ORDERS[name]:  # a generator typed wrong would give another group (or all of SO(3))
        raise AssertionError(f"{name}: {len(group)} elements, expected {GROUP_ORDERS[name]}")
    group.setflags(write=False)
    return group


def group_matrices(symmetry: str) -> np.ndarray:
    """(|G|, 3, 3) the rotations of ``symmetry`` (identity first); ValueError for a group not handled."""
    problem = symmetry_problem(symmetry)
    if problem is not None:
        raise ValueError(problem)
    m = _SYMMETRY.fullmatch(normalise_symmetry(symmetry))
    if m.group(3) is not None:
        return _polyhedral(m.group(3)).copy()
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


def _mates(direction: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(n, |G|, 3) every Sᵀ d of the (n, 3) directions, S = identity first."""
    return np.einsum("gji,nj->ngi", group, np.asarray(direction, dtype=np.float64).reshape(-1, 3))


def in_asymmetric_unit(direction: np.ndarray, group: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """(n,) bool: which of the (n, 3) directions are their orbit's representative (ties on the boundary kept)."""
    closeness = _mates(direction, group) @ _ANCHOR
    return closeness[:, 0] >= closeness.max(axis=1) - tolerance


def to_asymmetric_unit(direction: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(n, 3) each direction's symmetry mate in the asymmetric unit (the one :func:`in_asymmetric_unit` keeps)."""
    mates = _mates(direction, group)
    return mates[np.arange(len(mates)), np.argmax(mates @ _ANCHOR, axis=1)]


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
