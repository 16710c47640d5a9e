"""C_n symmetry of a view: from its canonical image (angular harmonics) and from the latent angle (paper B)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.symmetry import DEFAULT_THRESHOLD, detect_symmetry, symmetry_from_angles
from relion_canon.geometry import rotate_images

BOX = 64


def _molecule(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A particle-like 3-D layout of Gaussian atoms (x, y, z), in units of its radius: three lobes of
    unequal size at unequal distances plus small blobs around them, inside an anisotropic ellipsoid, as
    the simulator's phantom (no symmetry in any view)."""
    rng = np.random.default_rng(seed)
    lobes = np.array([[0.6, 0.1, 0.0], [-0.45, 0.45, 0.1], [-0.25, -0.55, -0.2]]) * [1.0, 0.72, 0.55]
    owner = rng.integers(0, 3, 24)
    centres = np.concatenate([lobes, lobes[owner] + rng.normal(scale=0.15, size=(24, 3))])
    sigmas = np.concatenate([[0.2, 0.15, 0.11], rng.uniform(0.06, 0.11, 24)])
    weights = np.concatenate([[1.6, 1.4, 1.2], rng.uniform(0.6, 1.2, 24)])
    return centres, sigmas, weights


def _project(box: int, centres_px: np.ndarray, sigmas_px: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Projection along z of Gaussian atoms (centres in px from pixel box//2), rendered analytically."""
    c = np.arange(box, dtype=np.float64) - box // 2
    gx = np.exp(-0.5 * ((c[None, :] - centres_px[:, 0, None]) / sigmas_px[:, None]) ** 2)
    gy = np.exp(-0.5 * ((c[None, :] - centres_px[:, 1, None]) / sigmas_px[:, None]) ** 2)
    return np.einsum("a,ay,ax->yx", weights * sigmas_px, gy, gx)


def _blob_image(seed: int, box: int = BOX) -> np.ndarray:
    """Five anisotropic Gaussian blobs at 4-19 px from the centre: an asymmetric particle-like image."""
    rng = np.random.default_rng(seed)
    c = np.arange(box, dtype=np.float64) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.zeros((box, box))
    for _ in range(5):
        r, t = rng.uniform(4.0, 0.3 * box), rng.uniform(0.0, 2 * np.pi)
        s1, s2, a = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0), rng.uniform(0.0, np.pi)
        dx, dy = x - r * np.cos(t), y - r * np.sin(t)
        u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        img += rng.uniform(0.5, 1.5) * np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return img


def _symmetrise(img: np.ndarray, n: int) -> np.ndarray:
    """Sum of n copies rotated by 360°·k/n about pixel box//2 (cubic interpolation): C_n up to resampling."""
    return rotate_images(np.repeat(img[None], n, axis=0), 360.0 * np.arange(n) / n, order=3).sum(axis=0)


def _noisy(img: np.ndarray, relative_sigma: float, seed: int) -> np.ndarray:
    return img + relative_sigma * img.std() * np.random.default_rng(seed + 1000).standard_normal(img.shape)


@pytest.mark.parametrize("n", [2, 3, 5, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_symmetry_found(n, seed):
    img = _symmetrise(_blob_image(seed), n)
    res = detect_symmetry(img)
    assert res.n == n and res.evidence and res.method == "image"
    assert res.confidence > 0.95, res.scores
    # The divisors of n are symmetries of the image too; nothing that is not a divisor scores high.
    for k, s in res.scores.items():
        if n % k == 0:
            assert s > 0.9, (k, s)
        else:
            assert s < 0.5, (k, s)
    # White noise of a quarter of the image's standard deviation: still found, still confident.
    noisy = detect_symmetry(_noisy(img, 0.25, seed))
    assert noisy.n == n and noisy.confidence > 0.85, noisy.scores


def test_c6_is_not_reported_as_c2_c3_or_c12():
    """The largest consistent n: C_6 also has C_2 and C_3 (and passes both), but not C_12."""
    res = detect_symmetry(_symmetrise(_blob_image(7), 6))
    assert res.n == 6
    assert res.scores[2] >= DEFAULT_THRESHOLD and res.scores[3] >= DEFAULT_THRESHOLD
    assert res.scores[12] < 0.5 and res.upper_scores[12] < DEFAULT_THRESHOLD


@pytest.mark.parametrize("seed", range(6))
def test_asymmetric_image(seed):
    res = detect_symmetry(_blob_image(seed))
    assert res.n == 1 and res.evidence
    assert max(res.scores.values()) < DEFAULT_THRESHOLD - 0.1
    assert res.confidence > 0.5, res.upper_scores  # clearly asymmetric, not merely undetermined
    noisy = detect_symmetry(_noisy(_blob_image(seed), 0.5, seed))
    assert noisy.n == 1


def test_noise_never_invents_a_symmetry():
    """Heavy noise (half the image's standard deviation) may leave C_n unproven, but the answer is then
    'undetermined' (n = 1, confidence near 0), never some other n."""
    found = 0
    for n in (3, 6):
        for seed in range(6):
            res = detect_symmetry(_noisy(_symmetrise(_blob_image(seed), n), 0.5, seed))
            assert res.n in (1, n), (n, seed, res.n)
            if res.n == n:
                found += 1
            else:
                assert res.confidence < 0.2, (n, seed, res.confidence)
    assert found >= 8, found


def test_noise_and_round_images_give_no_evidence():
    noise = np.random.default_rng(3).standard_normal((BOX, BOX))
    res = detect_symmetry(noise)
    assert res.n == 1 and res.confidence == 0.0 and not res.evidence
    c = np.arange(BOX) - BOX // 2
    rr = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    for round_image in (np.exp(-(rr**2) / 50.0), np.exp(-((rr - 12.0) ** 2) / 4.0)):
        res = detect_symmetry(round_image)
        assert res.n == 1 and not res.evidence


def test_rotation_and_centre():
    """A turned C_5 image is still C_5 (the score is rotation invariant); the same image moved off the
    rotation centre box//2 is not, as RELION rotates about that pixel."""
    img = _symmetrise(_blob_image(4), 5)
    turned = rotate_images(img[None], np.array([23.0]), order=3)[0]
    assert detect_symmetry(turned).n == 5
    assert detect_symmetry(ndimage.shift(img, (3.0, -2.0), order=3)).n == 1


def _trimer_projection(box: int, tilt_deg: float) -> np.ndarray:
    """The molecule made a C3 trimer about z, tilted about x, projected along z."""
    centres, sigmas, weights = _molecule()
    radius = 0.22 * box
    parts = []
    for k in range(3):
        a = 2 * np.pi * k / 3
        rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        parts.append((centres * radius + [0.3 * radius, 0.0, 0.0]) @ rot.T)
    t = np.deg2rad(tilt_deg)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    sig = np.maximum(np.tile(sigmas, 3) * radius, 0.8)
    return _project(box, np.concatenate(parts) @ tilt.T, sig, np.tile(weights, 3))


def test_trimer_views():
    """A molecule made a C3 trimer: C3 seen down its axis, nothing once tilted by 40°."""
    top = detect_symmetry(_trimer_projection(48, 0.0))
    assert top.n == 3 and top.confidence > 0.9
    assert detect_symmetry(_trimer_projection(48, 40.0)).n == 1


def _rotational_correlation(img: np.ndarray, n: int) -> float:
    """Directly in pixel space: correlation of the image's non-radial part (the image less its mean over
    each 1-px ring) with its rotations by 360°·k/n, averaged over k = 1 … n−1."""
    box = img.shape[0]
    c = np.arange(box) - box // 2
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    ring = np.rint(r).astype(int)
    disc = r <= box // 2 - 1
    profile = np.bincount(ring[disc], weights=img[disc]) / np.bincount(ring[disc])
    part = np.where(disc, img - profile[np.minimum(ring, profile.size - 1)], 0.0)
    turned = rotate_images(np.repeat(part[None], n - 1, axis=0), 360.0 * np.arange(1, n) / n, order=3)
    return float(np.mean([np.sum(part * t) / np.sum(part * part) for t in turned]))


def test_scores_are_rotational_correlations():
    """Random views of the (asymmetric) molecule, centred on their centre of mass as RELION centres
    particles. The score s_n must equal the direct rotational correlation wherever that is positive, so
    that a reported symmetry is one the view really has at this resolution: a two-lobed side view of an
    elongated molecule is nearly C2, and is called so; no view is called anything but C1 or C2."""
    centres, sigmas, weights = _molecule()
    rng = np.random.default_rng(0)
    found = set()
    spread = []
    for _ in range(12):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        pts = centres @ q.T * 12.0
        pts -= np.average(pts, axis=0, weights=weights * sigmas**3)
        img = _project(48, pts, np.maximum(sigmas * 12.0, 0.8), weights)
        res = detect_symmetry(img)
        found.add(res.n)
        for n in (2, 3, 4):
            direct = _rotational_correlation(img, n)
            assert abs(res.scores[n] - max(direct, 0.0)) < 0.05, (n, res.scores[n], direct)
        if res.n > 1:
            assert _rotational_correlation(img, res.n) >= DEFAULT_THRESHOLD - 0.05
        spread.append(res.scores[2])
    assert found <= {1, 2}
    assert min(spread) < 0.1 and max(spread) > 0.5  # the views differ: the check above is not vacuous


@pytest.mark.parametrize(
    "image,kwargs",
    [
        (np.zeros((4, 8, 8)), {}),
        (np.full((32, 32), np.nan), {}),
        (np.zeros((64, 64)), {"max_n": 1}),
        (np.zeros((64, 64)), {"radius": 40}),
        (np.zeros((64, 64)), {"threshold": 1.5}),
    ],
)
def test_bad_input(image, kwargs):
    with pytest.raises(ValueError):
        detect_symmetry(image, **kwargs)


def test_small_image_lowers_max_n():
    """A 16 px image (radius 7 px) resolves angular harmonics up to 21: candidates stop at n = 10, and a C3
    image is still found."""
    res = detect_symmetry(_symmetrise(_blob_image(0, box=16), 3))
    assert max(res.scores) == 10 and res.report()["max_n"] == 10
    assert res.n == 3


# Route (b): paper B Sec. 5.3.3, the latent angle winds n times per turn of the particle.


def _relion_psi(true_psi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """RELION's psi of a C_n view is defined only modulo 360°/n: add a random multiple of it."""
    return true_psi + 2 * np.pi * rng.integers(0, n, true_psi.size) / n


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_latent_angle_period(n):
    rng = np.random.default_rng(n)
    psi = rng.uniform(-np.pi, np.pi, 3000)
    # The latent circle turns the other way, from an arbitrary zero, with 20° of scatter.
    alpha = -n * psi + 1.3 + np.deg2rad(20.0) * rng.standard_normal(psi.size)
    res = symmetry_from_angles(alpha, _relion_psi(psi, n, rng))
    assert res.n == n and res.evidence and res.method == "latent_angle"
    assert res.confidence > 0.85
    assert all(s < 0.15 for k, s in res.scores.items() if k != n), res.scores


def test_latent_angle_from_a_cone():
    """End to end: a C3 view's latent cone (angle 3ψ) read by polar_readout, against RELION's psi."""
    rng = np.random.default_rng(11)
    psi = rng.uniform(-np.pi, np.pi, 4000)
    r = rng.uniform(0.5, 2.5, psi.size)
    latent = np.stack([r * np.cos(3 * psi), r * np.sin(3 * psi), r], axis=1) + 0.03 * rng.standard_normal((4000, 3))
    alpha, _ = polar_readout(latent @ np.linalg.qr(rng.standard_normal((3, 3)))[0])
    res = symmetry_from_angles(alpha, _relion_psi(psi, 3, rng))
    assert res.n == 3 and res.confidence > 0.9


def test_latent_angle_unrelated():
    rng = np.random.default_rng(12)
    res = symmetry_from_angles(rng.uniform(-np.pi, np.pi, 2000), rng.uniform(-np.pi, np.pi, 2000))
    assert res.n == 1 and not res.evidence and res.confidence == 0.0
    with pytest.raises(ValueError):
        symmetry_from_angles(np.zeros(5), np.zeros(4))
