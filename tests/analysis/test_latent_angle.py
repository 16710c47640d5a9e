"""polar_readout: paper B's PCA → polar read-out of the in-plane angle (eq. 6), and its radius."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import spearmanr

from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.metrics import align_angles


def _cone(n: int, seed: int, noise: float = 0.01, stretch: float = 1.0, extra_dims: int = 0):
    """Points (r cos t, r sin t, r) + noise (σ = 0.01: 0.4-2 % of the radius), optionally stretched in-plane,
    then randomly rotated, scaled and moved in 3-D (or embedded in more dimensions with small nuisance
    coordinates)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-np.pi, np.pi, n)
    r = rng.uniform(0.5, 2.5, n)  # paper B's defocus range, µm, as the cone's radius
    pts = np.stack([stretch * r * np.cos(t), r * np.sin(t), r], axis=1) + noise * rng.standard_normal((n, 3))
    pts = Rotation.random(random_state=seed).apply(pts) * rng.uniform(0.2, 5.0) + rng.normal(0, 3, 3)
    if extra_dims:
        nuisance = 0.1 * rng.standard_normal((n, extra_dims))
        pts = np.concatenate([pts, nuisance], axis=1)
        q, _ = np.linalg.qr(rng.standard_normal((3 + extra_dims, 3 + extra_dims)))
        pts = pts @ q
    return pts, t, r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_cone_angles(seed):
    # 10,000 points: with a finite sample the PCA plane tilts off the cone's sections by about 1/√n rad
    # (1-1.5° at 2,000 points), which alone costs 1-2° of rMSE; the read-out itself is exact.
    latent, t, r = _cone(10_000, seed)
    angle, radius = polar_readout(latent)
    assert angle.shape == radius.shape == (10_000,)
    assert np.all(angle > -np.pi - 1e-12) and np.all(angle <= np.pi + 1e-12) and np.all(radius >= 0)
    fit = align_angles(np.rad2deg(angle), np.rad2deg(t))
    assert fit.rmse < 2.0, fit.rmse
    # The radius is what eq. 7 will turn into defocus: monotonic in the cone's radius.
    assert spearmanr(radius, r).correlation > 0.98


def test_four_dimensional_latent():
    """Paper B's experimental sets use L = 4: a nuisance dimension must not disturb the read-out."""
    latent, t, r = _cone(10_000, 5, extra_dims=1)
    angle, radius = polar_readout(latent)
    assert align_angles(np.rad2deg(angle), np.rad2deg(t)).rmse < 2.0
    assert spearmanr(radius, r).correlation > 0.98


def test_whitening_rounds_an_elliptical_ring():
    """U (whitened components), as in the paper, not UΣ: an in-plane stretch of 1.6 is undone."""
    latent, t, _ = _cone(10_000, 3, stretch=1.6)
    white, _ = polar_readout(latent)
    raw, _ = polar_readout(latent, whiten=False)
    assert align_angles(np.rad2deg(white), np.rad2deg(t)).rmse < 2.0
    assert align_angles(np.rad2deg(raw), np.rad2deg(t)).rmse > 5.0


def test_deterministic_and_input_untouched():
    latent, _, _ = _cone(300, 4)
    before = latent.copy()
    a1, r1 = polar_readout(latent)
    a2, r2 = polar_readout(latent.astype(np.float32))
    assert np.array_equal(latent, before)
    np.testing.assert_allclose(a1, a2, atol=1e-4)
    np.testing.assert_allclose(r1, r2, rtol=1e-4)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(5), np.zeros((5, 1)), np.zeros((2, 3)), np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 0.0]])],
)
def test_bad_input(bad):
    with pytest.raises(ValueError):
        polar_readout(bad)
