"""A built-in, procedurally generated "protein": no data file, the same molecule for the same seed.

The molecule is made of Gaussian blobs (globular domains) and Gaussian tubes (α-helix-like rods, one of them
coiled as a right-handed superhelix), laid out inside an asymmetric ellipsoid. A random 3D layout has no
symmetry and is chiral, so projections reveal mirror and handedness errors, and the coiled rod makes the
chirality obvious even at low resolution. Sizes are relative to the box, so the phantom fits any box; the
pixel size only sets the physical scale (and so how the CTF acts on it).
"""

from __future__ import annotations

import numpy as np

# Seeds of the two molecules the simulator uses: the particle and the decoy of the "other molecule" junk.
PARTICLE_SEED = 0
DECOY_SEED = 1


def _points_on_segment(p0: np.ndarray, p1: np.ndarray, spacing: float) -> np.ndarray:
    count = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / spacing)) + 1)
    t = np.linspace(0.0, 1.0, count)[:, None]
    return p0 + t * (p1 - p0)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def phantom_atoms(seed: int = PARTICLE_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian components of the phantom in units of its radius: centres (M, 3) as (x, y, z), sigmas, weights."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E3779B9]))
    # Unequal semi-axes make the overall shape anisotropic; the seed also varies them a little.
    axes = np.array([1.0, 0.72, 0.55]) * rng.uniform(0.9, 1.0, 3)
    centres: list[np.ndarray] = []
    sigmas: list[np.ndarray] = []
    weights: list[np.ndarray] = []

    def inside_point(scale: float) -> np.ndarray:
        while True:
            p = rng.uniform(-1.0, 1.0, 3)
            if np.sum(p**2) <= 1.0:
                return p * axes * scale

    # Globular domains: three lobes of unequal size at unequal distances (a scalene layout, so no view has
    # a mirror or rotational symmetry), each decorated by smaller blobs.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    lobes = np.array([[0.6, 0.1, 0.0], [-0.45, 0.45, 0.1], [-0.25, -0.55, -0.2]]) @ q.T * axes
    lobe_sigma = np.array([0.2, 0.15, 0.11])
    lobe_weight = np.array([1.6, 1.4, 1.2])
    centres.append(lobes)
    sigmas.append(lobe_sigma)
    weights.append(lobe_weight)
    n_blobs = 18
    owner = rng.integers(0, 3, n_blobs)
    centres.append(lobes[owner] + rng.normal(scale=0.18, size=(n_blobs, 3)))
    sigmas.append(rng.uniform(0.06, 0.11, n_blobs))
    weights.append(rng.uniform(0.6, 1.2, n_blobs))

    # Helix-like rods: straight tubes of 8-16 Å at a 100 Å scale, i.e. σ ≈ 0.05 of the radius.
    rod_sigma = 0.05
    spacing = rod_sigma * 0.7
    for _ in range(7):
        mid = inside_point(0.75)
        half = _random_direction(rng) * rng.uniform(0.25, 0.45)
        pts = _points_on_segment(mid - half, mid + half, spacing)
        centres.append(pts)
        sigmas.append(np.full(len(pts), rod_sigma))
        weights.append(np.full(len(pts), 0.9))

    # A right-handed coiled rod: x = r cos t, y = r sin t, z = c t (c > 0), then rotated into place.
    t = np.linspace(0.0, 3.0 * 2.0 * np.pi, 90)
    coil = np.stack([0.16 * np.cos(t), 0.16 * np.sin(t), 0.045 * (t - t.mean())], axis=1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))  # a proper rotation keeps the coil right-handed
    coil = coil @ q.T + inside_point(0.35)
    centres.append(coil)
    sigmas.append(np.full(len(coil), rod_sigma))
    weights.append(np.full(len(coil), 0.9))

    return np.concatenate(centres), np.concatenate(sigmas), np.concatenate(weights)


def render_gaussians(box: int, centres: np.ndarray, sigmas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of isotropic Gaussians on a box³ grid, returned as MRC-order (z, y, x); centres in voxels (x, y, z)
    relative to voxel ``box // 2``. Each Gaussian is separable, so the sum is a (box, M) × (M, box²) product."""
    grid = np.arange(box, dtype=np.float64) - box // 2
    vol = np.zeros((box, box * box))
    for start in range(0, len(centres), 256):  # bounded temporaries for big boxes
        c = centres[start : start + 256]
        s = sigmas[start : start + 256, None]
        g = [np.exp(-0.5 * ((grid[None, :] - c[:, i, None]) / s) ** 2) for i in range(3)]
        gx, gy, gz = g
        gyx = (gy[:, :, None] * gx[:, None, :]).reshape(len(c), -1)
        vol += (gz * weights[start : start + 256, None]).T @ gyx
    return vol.reshape(box, box, box)


def phantom_volume(box: int, seed: int = PARTICLE_SEED, diameter_fraction: float = 0.6) -> np.ndarray:
    """The phantom as a (z, y, x) float32 map whose longest dimension is about ``diameter_fraction`` of the box."""
    centres, sigmas, weights = phantom_atoms(seed)
    radius = 0.5 * diameter_fraction * box
    # Rods must stay at least ~1 voxel wide or they alias on small boxes.
    sig = np.maximum(sigmas * radius, 0.8)
    # Keep each component's integrated mass independent of how much the sigma floor widened it.
    w = weights * (sigmas * radius / sig) ** 3
    vol = render_gaussians(box, centres * radius, sig, w)
    return vol.astype(np.float32)
