"""The classification benchmark's scores, as pure functions of arrays (no files, no programs run).

Conventions: ``view`` holds each true (non-junk) particle's true view, 0..V-1; ``cls`` the class a method put it
in (any integers); angles in degrees.
"""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.metrics import align_angles
from relion_canon.geometry import wrap_deg

# Below this many particles an offset and sign fitted to a (class, view) pair would flatter its error.
MIN_PAIR_PARTICLES = 10


def classes_found(cls: np.ndarray, min_share: float = 0.01) -> int:
    """Distinct class numbers holding at least ``min_share`` of the particles."""
    _, counts = np.unique(cls, return_counts=True)
    return int(np.sum(counts >= min_share * len(cls)))


def _dominant_share(groups: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose label is the most common label of their group."""
    hits = 0
    for g in np.unique(groups):
        _, counts = np.unique(labels[groups == g], return_counts=True)
        hits += counts.max()
    return float(hits / len(groups))


def class_purity(cls: np.ndarray, view: np.ndarray) -> float:
    """The share of true particles whose class's dominant true view is their own."""
    return _dominant_share(cls, view)


def views_merged_within(directions: np.ndarray, max_angle_deg: float) -> np.ndarray:
    """(V,) one label per view for ``directions`` (V, 3) unit viewing directions: views whose directions lie
    within ``max_angle_deg`` of each other, directly or through a chain of such views, share a label. Random
    views can fall a few degrees apart, closer than any classifier can part at low SNR."""
    n = len(directions)
    label = np.arange(n)
    close = np.degrees(np.arccos(np.clip(directions @ directions.T, -1.0, 1.0))) <= max_angle_deg
    for a, b in zip(*np.nonzero(np.triu(close, 1))):
        old, new = label[b], label[a]
        label[label == old] = new
    return np.unique(label, return_inverse=True)[1]


def view_completeness(cls: np.ndarray, view: np.ndarray) -> float:
    """The share of true particles in their view's dominant class (1 when no view is split over classes)."""
    return _dominant_share(view, cls)


def psi_within_classes(cls: np.ndarray, view: np.ndarray, psi_deg: np.ndarray, true_psi_deg: np.ndarray,
                       min_particles: int = MIN_PAIR_PARTICLES) -> dict:
    """psi errors with one offset and sign fitted per (class, true view) pair, pooled over the pairs (so each
    pair weighs by its count); pairs under ``min_particles`` are left out, and ``scored_share`` says how many
    true particles were scored."""
    errors = []
    for c in np.unique(cls):
        for v in np.unique(view[cls == c]):
            rows = np.flatnonzero((cls == c) & (view == v))
            if len(rows) >= min_particles:
                errors.append(align_angles(psi_deg[rows], true_psi_deg[rows]).errors)
    if not errors:
        return {"psi_rmse": None, "psi_median": None, "psi_scored_share": 0.0}
    err = np.concatenate(errors)
    return {"psi_rmse": float(np.sqrt(np.mean(err**2))), "psi_median": float(np.median(np.abs(err))),
            "psi_scored_share": float(len(err) / len(cls))}


def viewing_directions(rot_deg: np.ndarray, tilt_deg: np.ndarray) -> np.ndarray:
    """Unit projection directions (n, 3) of RELION Euler angles: the third row of the rotation matrix."""
    rot, tilt = np.deg2rad(rot_deg), np.deg2rad(tilt_deg)
    return np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=1)


def close_pairs(directions: np.ndarray, max_angle_deg: float, max_pairs: int, seed: int) -> np.ndarray:
    """Up to ``max_pairs`` index pairs (m, 2) of particles whose directions lie within ``max_angle_deg``: every
    such pair when there are few particles, else pairs drawn at random (with replacement) and kept if close."""
    rng = np.random.default_rng(seed)
    n = len(directions)
    min_cos = np.cos(np.deg2rad(max_angle_deg))
    if n * (n - 1) // 2 <= 2_000_000:
        i, j = np.triu_indices(n, k=1)
    else:
        found, tries = [], 0
        while sum(len(f) for f in found) < max_pairs and tries < 50:
            i, j = rng.integers(0, n, 2_000_000), rng.integers(0, n, 2_000_000)
            keep = i != j
            found.append(np.stack([i[keep], j[keep]], axis=1))
            found[-1] = found[-1][np.einsum("ij,ij->i", directions[found[-1][:, 0]], directions[found[-1][:, 1]])
                                  >= min_cos]
            tries += 1
        pairs = np.concatenate(found)
        i, j = pairs[:, 0], pairs[:, 1]
    close = np.einsum("ij,ij->i", directions[i], directions[j]) >= min_cos
    pairs = np.stack([i[close], j[close]], axis=1)
    if len(pairs) > max_pairs:
        pairs = pairs[rng.choice(len(pairs), max_pairs, replace=False)]
    return pairs


def true_psi_difference_deg(rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray,
                            pairs: np.ndarray) -> np.ndarray:
    """The in-plane rotation between the two images of each pair: the angle about z of A_i A_jᵀ (A: RELION's
    Euler matrix); exactly psi_i − psi_j when the two share rot and tilt, and its natural extension to nearby
    directions, where a difference of rot also turns the image."""
    from relion_canon.simulate import euler_matrix

    a = euler_matrix(rot_deg, tilt_deg, psi_deg)
    m = np.einsum("nij,nkj->nik", a[pairs[:, 0]], a[pairs[:, 1]])
    return np.rad2deg(np.arctan2(m[:, 0, 1], m[:, 0, 0]))


def pair_scores(cls: np.ndarray, psi_deg: np.ndarray, pairs: np.ndarray, true_diff_deg: np.ndarray) -> dict:
    """For pairs of true particles close in viewing direction: the share put in the same class, and for those,
    the error of their predicted psi difference against the true one (one global sign fitted, wrapped)."""
    if len(pairs) == 0:
        return {"pair_same_class": None, "pair_psi_rmse": None, "pair_psi_median": None, "n_pairs": 0}
    same = cls[pairs[:, 0]] == cls[pairs[:, 1]]
    result = {"pair_same_class": float(np.mean(same)), "pair_psi_rmse": None, "pair_psi_median": None,
              "n_pairs": int(len(pairs))}
    if same.any():
        diff = psi_deg[pairs[same, 0]] - psi_deg[pairs[same, 1]]
        err = min((wrap_deg(sign * diff - true_diff_deg[same]) for sign in (1, -1)),
                  key=lambda e: float(np.mean(e**2)))
        result["pair_psi_rmse"] = float(np.sqrt(np.mean(err**2)))
        result["pair_psi_median"] = float(np.median(np.abs(err)))
    return result


def selection_scores(is_junk: np.ndarray, kept: np.ndarray) -> dict:
    """How a selection treats good and junk particles: the share of good ones kept, the share of the selected
    set that is junk, and the share of the junk kept."""
    good = ~is_junk
    return {"good_kept": float(kept[good].mean()) if good.any() else None,
            "junk_in_selected": float(is_junk[kept].mean()) if kept.any() else None,
            "junk_kept": float(kept[is_junk].mean()) if is_junk.any() else None}


def relion_kept_classes(class_resolution_A: dict[int, float], class_counts: dict[int, int],
                        factor: float) -> set[int]:
    """A truth-free RELION selection: keep the classes whose estimated resolution (Å) is no worse than
    ``factor`` times the particle-weighted median of the classes' resolutions (junk classes are blurred)."""
    numbers = [c for c in class_counts if class_counts[c] > 0]
    res = np.array([class_resolution_A.get(c, np.inf) for c in numbers])
    weights = np.array([class_counts[c] for c in numbers], float)
    order = np.argsort(res)
    cumulative = np.cumsum(weights[order])
    median = res[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])]
    return {c for c, r in zip(numbers, res) if r <= factor * median}
