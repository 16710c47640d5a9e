"""The job's canonical frame against the truth's: one global rotation and mirror fitted over the whole set,
and the per-image error once they are removed (paper A, Table 1; :data:`NORMALISATION` for the scale).

A network learns the canonical frame only up to a global rotation and mirror, so the job's canonical images
are compared with the clean, unrotated truth after removing the frame that fits them best.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from scipy.optimize import minimize_scalar

from relion_canon.geometry import rotate_images, sample_rings, soft_circular_mask, wrap_deg

NORMALISATION = (
    "each image normalised to zero mean and unit variance inside a circular mask of radius box/2 − 1 px, "
    "MSE = mean squared difference over the mask pixels (= 2·(1 − Pearson r): 0 identical, 2 uncorrelated)"
)

CHUNK = 512  # images read at a time: memory stays flat however many particles are evaluated
REFINE_IMAGES = 256  # image pairs used to refine the canonical frame's rotation below the polar grid's 1°

# Positions (0-based, into the pairs being scored) → (job canonical images, truth images), each (K, H, W).
PairReader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _mask(box: int) -> np.ndarray:
    """The evaluation mask: a hard disc of radius box/2 − 1 px about pixel box//2 (boolean)."""
    return soft_circular_mask(box, box / 2 - 1, edge_px=0.0) > 0.5


def normalise_in_mask(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float64 images with zero mean and unit variance inside the evaluation mask, 0 outside
    (a constant image becomes all zeros, i.e. MSE 1 against any normalised image)."""
    x = np.asarray(images, dtype=np.float64)
    m = _mask(x.shape[-1])
    inside = x[:, m]
    inside = inside - inside.mean(axis=1, keepdims=True)
    std = inside.std(axis=1, keepdims=True)
    inside = np.divide(inside, std, out=np.zeros_like(inside), where=std > 0)
    out = np.zeros_like(x)
    out[:, m] = inside
    return out


def _mirror(images: np.ndarray) -> np.ndarray:
    """Left-right mirror about column box//2 (RELION's rotation centre), so that mirroring and rotating
    about that pixel commute as they should."""
    box = images.shape[-1]
    return images[..., (2 * (box // 2) - np.arange(box)) % box]


def _rotate(images: np.ndarray, angle_deg: float) -> np.ndarray:
    """Turn each (H, W) image counter-clockwise (row 0 at the top) by ``angle_deg`` about pixel box//2, in
    float64 with cubic splines: bilinear interpolation blurs enough to show as a few % of MSE on small boxes."""
    return rotate_images(np.asarray(images, dtype=np.float64), angle_deg, order=3)


def to_truth_frame(canonical: np.ndarray, rotation_deg: float, mirrored: bool) -> np.ndarray:
    """The job's canonical images put in the truth's frame: mirror (if the frame is mirrored), then turn
    back by the fitted rotation (the inverse of job = mirror?(R_rotation(truth)))."""
    x = _mirror(np.asarray(canonical)) if mirrored else np.asarray(canonical)
    return _rotate(x, -rotation_deg)


def _polar(images: np.ndarray, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, R, T) bilinear samples on rings of radius 1 … box/2 − 1 px about pixel box//2, and the ring radii."""
    box = images.shape[-1]
    radii = np.arange(1, int(box / 2 - 1) + 1, dtype=np.float64)
    return np.stack([sample_rings(img, radii, n_angles, order=1) for img in images]), radii


class _FrameFit:
    """Accumulates, chunk by chunk, the rotational cross-correlation of the job's canonical images (plain
    and mirrored) with the truth, summed over all pairs: the fit sees the whole set at constant memory.

    On rings, a counter-clockwise turn by α (row 0 at the top) moves what sat at polar angle θ + α to θ, so
    if job = R_α(truth) the ring profiles satisfy job(θ) = truth(θ + α): the peak of
    Σ_θ job(θ)·truth(θ + α), an FFT correlation along θ weighted by the ring radius (area), gives α.
    """

    def __init__(self, n_angles: int = 360):
        self.n_angles = n_angles
        self.spectra = {False: np.zeros(n_angles // 2 + 1, complex), True: np.zeros(n_angles // 2 + 1, complex)}

    def add(self, canonical: np.ndarray, truth: np.ndarray) -> None:
        t_polar, radii = _polar(normalise_in_mask(truth), self.n_angles)
        f_truth = np.fft.rfft(t_polar, axis=-1)
        job = normalise_in_mask(canonical)
        for mirrored in (False, True):
            j_polar, _ = _polar(_mirror(job) if mirrored else job, self.n_angles)
            cross = np.conj(np.fft.rfft(j_polar, axis=-1)) * f_truth
            self.spectra[mirrored] += np.einsum("nrt,r->t", cross, radii)

    def peaks(self) -> dict[bool, tuple[float, float]]:
        """mirrored → (correlation peak, rotation in degrees)."""
        out = {}
        for mirrored, spectrum in self.spectra.items():
            corr = np.fft.irfft(spectrum, n=self.n_angles)
            k = int(np.argmax(corr))
            out[mirrored] = (float(corr[k]), float(wrap_deg(k * 360.0 / self.n_angles)))
        return out


def _refine(canonical: np.ndarray, truth: np.ndarray, start_deg: float, mirrored: bool) -> tuple[float, float]:
    """The rotation near ``start_deg`` (± one polar step) that minimises the mean MSE, and that MSE.
    ``start_deg`` is the rotation of the (mirrored) job images relative to the truth."""
    target = normalise_in_mask(truth)
    source = _mirror(canonical) if mirrored else np.asarray(canonical)

    def mean_mse(angle: float) -> float:
        return float(np.mean(_mse(normalise_in_mask(_rotate(source, -angle)), target)))

    res = minimize_scalar(mean_mse, bounds=(start_deg - 1.5, start_deg + 1.5), method="bounded",
                          options={"xatol": 0.01})
    return float(wrap_deg(res.x)), float(res.fun)


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = _mask(a.shape[-1])
    return np.mean((a[:, m] - b[:, m]) ** 2, axis=1)


def canonical_errors(canonical: np.ndarray, truth: np.ndarray, rotation_deg: float, mirrored: bool) -> np.ndarray:
    """(N,) per-image MSE (see :data:`NORMALISATION`) of the job's canonical images, put in the truth's frame
    with the given global rotation and mirror, against the clean truth images."""
    return _mse(normalise_in_mask(to_truth_frame(canonical, rotation_deg, mirrored)), normalise_in_mask(truth))


def fit_canonical_frame(canonical: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """The one global rotation (degrees) and mirror of the job's canonical frame relative to the truth's,
    fitted on all (N, H, W) pairs: job ≈ mirror?(R_rotation(truth)). See :func:`fit_frame`."""
    return fit_frame(lambda sel: (canonical[sel], truth[sel]), len(canonical))


def fit_frame(read_pairs: PairReader, n: int) -> tuple[float, bool]:
    """:func:`fit_canonical_frame` on ``n`` image pairs read a chunk at a time by ``read_pairs``, so that
    memory stays flat however many pairs there are.

    The rotation is found on a 1° grid by a polar cross-correlation summed over every pair, for the plain and
    the mirrored job images, then refined to 0.01° by minimising the mean MSE on up to 256 pairs; the mirror
    hypothesis with the lower MSE wins."""
    fit = _FrameFit()
    for sel in chunks(n):
        fit.add(*read_pairs(sel))
    return _best_frame(fit, *read_pairs(spread_indices(n, REFINE_IMAGES)))


def frame_errors(read_pairs: PairReader, n: int, rotation_deg: float, mirrored: bool) -> np.ndarray:
    """:func:`canonical_errors` of ``n`` image pairs read a chunk at a time by ``read_pairs``."""
    return np.concatenate([canonical_errors(*read_pairs(sel), rotation_deg, mirrored) for sel in chunks(n)])


def chunks(n: int) -> Iterator[np.ndarray]:
    """Positions 0 … n − 1 in consecutive pieces of at most :data:`CHUNK`."""
    for start in range(0, n, CHUNK):
        yield np.arange(start, min(start + CHUNK, n))


def _best_frame(fit: _FrameFit, canonical: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    # A mirror hypothesis whose correlation peak is close to the best one is refined too: for a nearly
    # mirror-symmetric view the peaks are close and only the MSE after refinement tells them apart.
    peaks = fit.peaks()
    top = max(peak for peak, _ in peaks.values())
    best: tuple[float, float, bool] | None = None
    for mirrored, (peak, start) in peaks.items():
        if peak < top - 0.1 * abs(top):
            continue
        # Refinement works on the plain job images, whose relation to the truth is mirror-then-rotate.
        angle, err = _refine(canonical, truth, start, mirrored)
        if best is None or err < best[1]:
            best = (angle, err, mirrored)
    assert best is not None
    return best[0], best[2]


def spread_indices(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else np.zeros(0, int)

