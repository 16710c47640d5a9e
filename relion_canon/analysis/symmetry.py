"""Rotational (C_n) symmetry of a view, from its canonical image or from the latent angle.

Why it matters here: a view with C_n symmetry has its in-plane angle defined only modulo 360°/n, so the
angle a model learns (and RELION's psi) can only be compared modulo that, and paper B's latent circle is
then traversed n times per turn of the particle (Sec. 5.3.3: each orbit is S¹/C_n).

Route (a), :func:`detect_symmetry`, from an image (e.g. the average of the particles' canonical images).
The image is resampled on rings about pixel (H//2, W//2), RELION's rotation centre, and each ring is
expanded in angular harmonics e^{imθ}. An image with exact C_n symmetry has power only in the harmonics m
that are multiples of n. With P_m the non-radial power at harmonic m (1 ≤ m ≤ 2·max_n, summed over rings
weighted by their length, noise removed) and f_n = Σ_{n|m} P_m / Σ_m P_m its fraction in multiples of n,

    s_n = (n f_n − 1) / (n − 1),  clipped to [0, 1],

is the mean correlation of the image's non-radial part with its rotations by 360°·k/n, k = 1 … n−1 (the
rotational autocorrelation at those angles, averaged: Σ_m P_m cos(2πmk/n) averaged over k is exactly
that). It is 1 for exact C_n, and about 0 where power is spread over the harmonics without preference
(f_n ≈ 1/n): it corrects f_n for the share of power a random image puts on multiples of n by chance.
The reported ``scores`` are lower confidence bounds of s_n (≈ 2 σ of the noise, see below), and
``upper_scores`` the upper ones, so that noise can make a symmetry unprovable but not invent one.

Choice of n: an image with C_6 symmetry also has C_2 and C_3 (a rotation by 180° or 120° is a rotation by
a multiple of 60°), so s_2 = s_3 = s_6 = 1, and the image's symmetry is the *largest* such group. The
result is the largest n whose score reaches ``threshold``; s_12 of a C_6 image is low (harmonics 6, 18, …
are not multiples of 12), so C_6 is reported neither as C_2 or C_3 nor as C_12. Without such an n the
result is n = 1 with confidence 1 − (the largest *upper* bound of any s_n): near 1 when the data rule
every symmetry out, near 0 when noise leaves them open ("undetermined", not "asymmetric").

Threshold: 0.8, i.e. the view matches its 360°/n rotations at 0.8 on average over its non-radial part.
Measured on 48-64 px noise-free images, views centred on their centre of mass: the project's phantom
(two seeds, 200 random views each) scores at most 0.52, the hand and 70S ribosome maps at most 0.16
(40 views each), random asymmetric blob images at most 0.76; a dumbbell-like molecule with two dominant
lobes, though, has 9 % of its views at 0.8-0.92 on n = 2, and rightly: those side views are two blobs,
nearly unchanged by a half turn (the test suite checks the scores against the rotational correlation
computed directly in pixel space). Exact C_n images (sums of n rotated copies of a random blob image)
score 1.0; with white noise of 0.3× the image's standard deviation C_2 and C_3 are found in 20/20 cases,
C_5 in 19/20 and C_6 in 18/20 (64 px), the misses being "undetermined", never a wrong n. C_n images
that are nearly round (C_12 sums of broad blobs) carry almost no non-radial power and need clean data.
Between clear symmetry and none lies near symmetry, which one threshold decides; the scores are
returned so that a caller can see how close a call was.

Noise: white noise puts power into every harmonic, which pulls every f_n towards 1/n. Its expected
power per (ring, harmonic) cell is σ² times a template that depends only on the geometry (the cubic
spline resampling passes harmonics near a ring's pixel Nyquist, m ≈ πr, at about a fifth of the low-m
power), calibrated on a few seeded white-noise images; σ² is the median over all cells of power /
template (most cells hold no signal; ÷ ln 2 for the median of an exponential). The expected noise is
subtracted, and its scatter (exponential per cell, plus the error of σ²) gives the confidence bounds.
Where the remaining non-radial power is not clearly above that scatter (5 σ), or is a negligible share
(< 10⁻⁴) of the image's structure (a round blob, whose only non-radial power is interpolation error with
the pixel grid's own 4-fold pattern), there is no evidence: ``evidence`` is False and n = 1 with
confidence 0. Coloured noise (e.g. low-passed) breaks the white-noise template; averages of many
canonical images are what this is for, and their residual noise is small.

Route (b), :func:`symmetry_from_angles`, is paper B's observation made a test: for a C_n view the latent
polar angle α advances n times as fast as the particle's rotation ψ, α ≈ ±n·ψ + const (mod 2π). Given a
second angle estimate ψ per particle (RELION's psi of the same particles, or an angle head's output), the
mean resultant length R_n = |mean e^{i(α ∓ nψ)}| is near 1 for the right n and near 0 for every other
(including divisors and multiples of it, against which α − kψ still winds round). This needs that second
angle; the latent angle alone cannot show it (its density is uniform whatever n is), which is why route
(a) is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relion_canon.geometry import sample_rings

DEFAULT_THRESHOLD = 0.8
# Below this share of non-radial power in the image's structure the image is round: no evidence.
MIN_ANISOTROPY = 1e-4
# Non-radial power must exceed this many standard deviations of the noise's contribution to it.
MIN_EVIDENCE_SIGMA = 5.0
MIN_RING = 2  # px: rings closer to the centre resolve too few harmonics to say anything
DEFAULT_ANGLE_THRESHOLD = 0.3  # mean resultant length for route (b)
ANGLE_P_VALUE = 1e-3  # Rayleigh-test level for route (b), Bonferroni-corrected over the n tried
BOUND_SIGMA = 2.0  # the scores are ≈ 2 σ lower confidence bounds
MEDIAN_RELATIVE_ERROR = 1.5  # sd of the median of K exponential ratios ≈ 1.44 / √K of the median
NOISE_TEMPLATE_SEED = 0
NOISE_TEMPLATE_DRAWS = 8
NOISE_TEMPLATE_BINS = 20


@dataclass(frozen=True)
class SymmetryResult:
    """The symmetry found (n = 1: none), how sure, and the evidence per candidate n."""

    n: int
    confidence: float  # in [0, 1]: the n's score; for n = 1 (image route) 1 − the largest upper bound
    scores: dict[int, float]  # candidate n → score in [0, 1] (image route: lower confidence bound of s_n)
    method: str  # "image" or "latent_angle"
    threshold: float
    evidence: bool  # False where the data could not support any call (round or noise-only image)
    upper_scores: dict[int, float] | None = None  # image route: the scores' upper confidence bounds
    harmonic_power: np.ndarray | None = None  # image route: noise-corrected power per harmonic m = 0 … 2·max_n

    def report(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "confidence": round(float(self.confidence), 4),
            "method": self.method,
            "threshold": self.threshold,
            "evidence": self.evidence,
            "max_n": max(self.scores),
            "scores": {str(k): round(float(v), 4) for k, v in self.scores.items()},
        }


def _polar_rings(image: np.ndarray, r_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Rings r = MIN_RING … r_max (px) sampled about (H//2, W//2); returns (radii, (R, T) samples)."""
    # At least one sample per pixel of arc on the outer ring, a power of two for the FFT.
    n_theta = int(max(64, 2 ** np.ceil(np.log2(2 * np.pi * r_max))))
    radii = np.arange(MIN_RING, r_max + 1, dtype=np.float64)
    # Cubic spline with its prefilter: smooth signal is reproduced faithfully; what it does to noise (it
    # damps harmonics near the ring's pixel Nyquist) is calibrated by _noise_template.
    return radii, sample_rings(image, radii, n_theta, order=3)


def _ring_spectra(image: np.ndarray, r_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(radii, (R, T//2 + 1) complex angular Fourier coefficients c_m, m ≥ 0, of each ring, per sample)."""
    radii, rings = _polar_rings(image, r_max)
    return radii, np.fft.rfft(rings, axis=1) / rings.shape[1]


def _noise_template(shape: tuple[int, int], r_max: int) -> np.ndarray:
    """Expected ring power of unit white noise per (ring, harmonic), the shape of :func:`_ring_spectra`'s.

    White noise has the same power in every harmonic before resampling, but the cubic spline passes
    angular frequencies near the pixel Nyquist (m near πr) at only about a fifth of the power it passes at
    low m. That response depends on u = m / (πr) alone (measured: the curves of rings 2-31 px coincide),
    so a few noise images with a fixed seed, pooled over rings in bins of u, calibrate it precisely
    whatever the image size; it is then scaled by 1 / (2πr), a ring's number of independent pixels.
    """
    rng = np.random.default_rng(NOISE_TEMPLATE_SEED)
    draws = (np.abs(_ring_spectra(rng.standard_normal(shape), r_max)[1]) ** 2 for _ in range(NOISE_TEMPLATE_DRAWS))
    mean = sum(draws)
    radii = np.arange(MIN_RING, r_max + 1, dtype=np.float64)
    mean = np.asarray(mean) / NOISE_TEMPLATE_DRAWS * (2 * np.pi * radii)[:, None]
    m = np.arange(mean.shape[1])
    u = m[None, :] / (np.pi * radii[:, None])
    edges = np.linspace(0.0, 1.0, NOISE_TEMPLATE_BINS + 1)
    inside = (m[None, :] >= 1) & (u <= 1.0)
    which = np.clip(np.digitize(u[inside], edges) - 1, 0, NOISE_TEMPLATE_BINS - 1)
    counts = np.bincount(which, minlength=NOISE_TEMPLATE_BINS)
    response = np.bincount(which, weights=mean[inside], minlength=NOISE_TEMPLATE_BINS) / np.maximum(counts, 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    filled = counts > 0
    return np.interp(u, centres[filled], response[filled]) / (2 * np.pi * radii)[:, None]


def _bounds(
    n: int, power: np.ndarray, sd: np.ndarray, shared: np.ndarray, relative_error: float
) -> tuple[float, float]:
    """Lower and upper confidence bounds (≈ 2 σ each) of s_n from noise-corrected harmonic power.

    The lower bound assumes the off-multiple power is as large as the noise allows and the on-multiple
    power as small; the upper bound the reverse.
    """
    harmonics = np.arange(power.size)
    on = (harmonics >= 1) & (harmonics % n == 0)
    off = (harmonics >= 1) & (harmonics % n != 0)

    def spread(mask: np.ndarray) -> float:
        # Independent exponential scatter per harmonic, plus the noise variance's own error, which moves
        # every harmonic's noise estimate the same way.
        return float(np.sqrt(np.sum(sd[mask] ** 2) + (relative_error * np.sum(shared[mask])) ** 2))

    p_on, p_off = float(power[on].sum()), float(power[off].sum())
    e_on, e_off = BOUND_SIGMA * spread(on), BOUND_SIGMA * spread(off)

    def score(on_power: float, off_power: float) -> float:
        on_power, off_power = max(on_power, 0.0), max(off_power, 0.0)
        if on_power + off_power <= 0.0:
            return 0.0
        f = on_power / (on_power + off_power)
        return float(np.clip((n * f - 1.0) / (n - 1.0), 0.0, 1.0))

    return score(p_on - e_on, p_off + e_off), score(p_on + e_on, p_off - e_off)


def detect_symmetry(
    canonical_image: np.ndarray,
    max_n: int = 12,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    radius: int | None = None,
) -> SymmetryResult:
    """C_n symmetry (n = 1 … max_n) of a 2-D image about pixel (H//2, W//2); see the module docstring.

    ``radius``: outermost ring in px (default: the largest circle that fits in the image). Pass the
    particle mask's radius to keep solvent and box corners out. ``max_n`` is lowered to πr/2 where the
    outer ring cannot resolve harmonic 2·max_n (below 8 px for the default 12); ``scores`` then stop there.
    """
    img = np.asarray(canonical_image, dtype=np.float64)
    r_max = _checked_radius(img, max_n, threshold, radius)
    # Harmonics analysed: up to 2·max_n, so that every candidate n has at least two multiples. The outer
    # ring resolves harmonics up to πr; a smaller image gets a smaller max_n (reported) rather than an error.
    max_n = min(max_n, int(np.floor(np.pi * r_max)) // 2)
    return _decide(_harmonic_power(img, r_max, 2 * max_n), max_n, threshold)


def _checked_radius(img: np.ndarray, max_n: int, threshold: float, radius: int | None) -> int:
    """The outermost ring (px) to analyse, once the arguments are checked (``ValueError`` otherwise)."""
    if img.ndim != 2:
        raise ValueError(f"canonical image must be 2-D (H, W), got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("canonical image contains NaN or infinite values")
    if max_n < 2:
        raise ValueError(f"max_n must be at least 2, got {max_n}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    h, w = img.shape
    fits = min(h // 2, w // 2, h - 1 - h // 2, w - 1 - w // 2)
    r_max = fits if radius is None else int(radius)
    if not MIN_RING < r_max <= fits:
        raise ValueError(f"radius must be in ({MIN_RING}, {fits}] px for a {h}×{w} image, got {radius}")
    return r_max


@dataclass(frozen=True)
class _HarmonicPower:
    """Noise-corrected power per harmonic m = 0 … band (m = 0: the radial structure) and its uncertainty."""

    power: np.ndarray
    sd: np.ndarray  # per harmonic: the exponential scatter of its noise
    shared: np.ndarray  # per harmonic: the noise removed, all of it off by the same relative error
    relative_error: float  # of the noise variance


def _harmonic_power(img: np.ndarray, r_max: int, band: int) -> _HarmonicPower:
    """Ring-length-weighted power of harmonics 0 … ``band`` over rings out to ``r_max``, less the noise's."""
    radii, coeffs = _ring_spectra(img, r_max)
    ring_power = np.abs(coeffs) ** 2
    template = _noise_template(img.shape, r_max)
    m = np.arange(ring_power.shape[1])
    resolved = (m[None, :] >= 1) & (m[None, :] <= np.floor(np.pi * radii)[:, None])
    # One noise variance for the whole image: the median over every resolved (ring, harmonic) cell of
    # power / template. Signal occupies few cells (low m, or multiples of n), so most cells are noise,
    # where the ratio is σ² times an exponential variable, whose median is ln 2.
    ratios = ring_power[resolved] / template[resolved]
    variance = float(np.median(ratios)) / np.log(2.0)
    relative_error = MEDIAN_RELATIVE_ERROR / np.sqrt(ratios.size)
    used = (resolved & (m[None, :] <= band))[:, : band + 1]
    weight = radii[:, None]  # a ring's share of the image area
    noise = np.where(used, weight * variance * template[:, : band + 1], 0.0)
    power = np.sum(np.where(used, weight * ring_power[:, : band + 1], 0.0), axis=0) - noise.sum(axis=0)
    sd = np.sqrt(np.sum(noise**2, axis=0))  # exponential cells: sd = mean
    shared = noise.sum(axis=0)
    # Radial structure (harmonic 0 less the overall mean): what "round" is measured against.
    profile = coeffs[:, 0].real
    power[0] = float(np.sum(radii * (profile - np.average(profile, weights=radii)) ** 2))
    sd[0] = shared[0] = 0.0
    return _HarmonicPower(power, sd, shared, relative_error)


def _decide(harmonics: _HarmonicPower, max_n: int, threshold: float) -> SymmetryResult:
    """The largest n whose lower bound reaches ``threshold``; else n = 1, as sure as the data allow."""
    power, sd, shared, relative_error = harmonics.power, harmonics.sd, harmonics.shared, harmonics.relative_error
    total = float(power[1:].sum())
    total_sd = float(np.sqrt(np.sum(sd[1:] ** 2) + (relative_error * shared[1:].sum()) ** 2))
    # rfft keeps harmonic m but not −m: a ring's variance from harmonic m ≥ 1 is twice its |c_m|².
    evidence = total > MIN_EVIDENCE_SIGMA * total_sd and 2 * total > MIN_ANISOTROPY * (2 * total + power[0])
    candidates = range(2, max_n + 1)
    bounds = {k: _bounds(k, power, sd, shared, relative_error) for k in candidates}
    lower = {k: b[0] for k, b in bounds.items()}
    upper = {k: b[1] for k, b in bounds.items()}
    if not evidence:
        return SymmetryResult(1, 0.0, lower, "image", threshold, False, upper, power)
    passing = [k for k in candidates if lower[k] >= threshold]
    if passing:
        n = max(passing)
        return SymmetryResult(n, lower[n], lower, "image", threshold, True, upper, power)
    # No n is established; "no symmetry" is as sure as the most optimistic score of any n is low.
    return SymmetryResult(1, 1.0 - max(upper.values()), lower, "image", threshold, True, upper, power)


def symmetry_from_angles(
    latent_angle: np.ndarray,
    reference_angle: np.ndarray,
    max_n: int = 12,
    *,
    threshold: float = DEFAULT_ANGLE_THRESHOLD,
) -> SymmetryResult:
    """Paper B's route (Sec. 5.3.3): the n for which the latent polar angle α (radians, e.g. from
    :func:`relion_canon.analysis.latent_angle.polar_readout`) follows ±n × a second angle estimate ψ
    (radians, e.g. ``np.deg2rad`` of RELION's psi) of the same particles.

    ``scores[n]`` = R_n = max over the sign of |mean e^{i(α ∓ nψ)}| for n = 1 … max_n. The answer is the n
    with the largest R_n, provided it reaches ``threshold`` and passes a Rayleigh test (N·R² above
    −ln(p), p = 10⁻³ / (2·max_n)); otherwise there is no evidence and the result is n = 1 with
    confidence 0. Here n = 1 with evidence means "the angles agree one-to-one: no symmetry", confidence R_1.
    """
    a = np.asarray(latent_angle, dtype=np.float64)
    psi = np.asarray(reference_angle, dtype=np.float64)
    if a.shape != psi.shape or a.ndim != 1 or a.size < 3:
        raise ValueError("latent and reference angles must be 1-D arrays of equal length (at least 3)")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(psi))):
        raise ValueError("angles contain NaN or infinite values")
    if max_n < 2:
        raise ValueError(f"max_n must be at least 2, got {max_n}")
    za = np.exp(1j * a)
    scores: dict[int, float] = {}
    for k in range(1, max_n + 1):
        zk = np.exp(1j * k * psi)
        # α − kψ and α + kψ: the latent circle may turn either way relative to the particle.
        scores[k] = float(max(abs(np.mean(za * np.conj(zk))), abs(np.mean(za * zk))))
    n = max(scores, key=lambda k: scores[k])
    best = scores[n]
    significant = a.size * best**2 > -np.log(ANGLE_P_VALUE / (2 * max_n))
    if best < threshold or not significant:
        return SymmetryResult(1, 0.0, scores, "latent_angle", threshold, False)
    return SymmetryResult(n, best, scores, "latent_angle", threshold, True)
