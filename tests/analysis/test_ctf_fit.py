"""`fit_defocus`: the defocus whose CTF makes the (true) reference match each simulated particle best.

The reference is the simulation's clean canonical image and the alignment its true angles, so what is tested is
the defocus fit alone, not the refinement that would otherwise supply them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_canon.analysis.alignment import Alignment
from relion_canon.analysis.ctf_fit import fit_defocus
from relion_canon.ctf import CtfParams
from relion_canon.io.star import read_star
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BOX = 48
PIXEL_A = 3.0
STEP_A = 50.0
# Half-way between the 50 Å candidates of SEARCH_A: a fit snapped to the grid would be 25 Å off on every particle.
DEFOCUS_A = (8025.0, 12025.0, 16025.0)
SEARCH_A = (5000.0, 20000.0)


@dataclasses.dataclass
class Particles:
    images: np.ndarray  # (N, B, B) as written, no preprocessing
    ctf: CtfParams  # the STAR's
    alignment: Alignment  # true angles, no shift, the true canonical image as reference, white noise
    true_defocus_A: np.ndarray  # (N,) mean of the true DefocusU/V

    def batches(self, size: int = 64):
        def generate():
            for start in range(0, len(self.images), size):
                idx = np.arange(start, min(start + size, len(self.images)))
                yield idx, self.images[idx]

        return generate

    def fit(self, ctf: CtfParams | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        return fit_defocus(self.batches(), self.alignment, self.ctf if ctf is None else ctf, PIXEL_A, BOX, **kwargs)


def _simulate(root: Path, **overrides) -> Particles:
    config = {"n_particles": 90, "box": BOX, "pixel_size": PIXEL_A, "snr": math.inf, "junk_fraction": 0.0,
              "phantom_seed": 7, "seed": 5, "defocus_values": DEFOCUS_A, **overrides}
    simulate_dataset(SimulationConfig(**config), root)
    truth = read_ground_truth(root)
    with mrcfile.open(root / "particles.mrcs") as m:
        images = m.data.astype(np.float32)
    with mrcfile.open(root / "ground_truth_clean.mrcs") as m:
        reference = m.data[0].astype(np.float32)  # one view, no junk: every particle's is the same
    n = len(images)
    alignment = Alignment(psi=truth["rlnAnglePsi"].to_numpy(np.float64), shift=np.zeros((n, 2)), score=np.ones(n),
                          reference=reference, frc=np.ones(BOX // 2 + 1), noise=np.ones(BOX // 2 + 1))
    true = 0.5 * (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy(np.float64)
    return Particles(images, read_star(root / "particles.star").ctf_params(), alignment, true)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def upright(tmp_path_factory) -> Particles:
    # psi = 0: the reference needs no turning, so nothing but the fit itself limits the accuracy.
    return _simulate(tmp_path_factory.mktemp("upright"), psi=0.0)


@pytest.fixture(scope="module")
def astigmatic(tmp_path_factory) -> Particles:
    return _simulate(tmp_path_factory.mktemp("astigmatic"), psi=0.0, astigmatism=4000.0)


def test_noise_free_defocus_is_recovered_between_grid_points(upright):
    estimate, peak = upright.fit(search=SEARCH_A, step=STEP_A)
    error = estimate - upright.true_defocus_A
    # Refined by the parabola through the best candidate and its neighbours: well inside the 25 Å a grid
    # snap would give, and not on the grid.
    assert np.abs(error).max() < 15.0, np.abs(error).max()
    assert _rmse(estimate, upright.true_defocus_A) < 10.0
    on_grid = np.isclose(np.remainder(estimate, STEP_A), 0.0, atol=1e-6) | np.isclose(
        np.remainder(estimate, STEP_A), STEP_A, atol=1e-6)
    assert not on_grid.any()
    assert np.all(np.isfinite(peak)) and np.all(peak > 0)


def test_a_finer_grid_agrees(upright):
    coarse, coarse_peak = upright.fit(search=SEARCH_A, step=STEP_A)
    fine, fine_peak = upright.fit(search=SEARCH_A, step=5.0)
    assert np.abs(coarse - fine).max() < 10.0
    np.testing.assert_allclose(coarse_peak, fine_peak, rtol=1e-3)


def test_the_default_search_finds_the_images_defocus_not_the_stars(upright):
    # The STAR's defocus is 2,000 Å off: the default search (STAR range ± 5,000 Å) still finds the images'.
    off = dataclasses.replace(upright.ctf, defocus_u=upright.ctf.defocus_u + 2000.0,
                              defocus_v=upright.ctf.defocus_v + 2000.0)
    estimate, _ = upright.fit(ctf=off)
    assert _rmse(estimate, upright.true_defocus_A) < 10.0


def test_beyond_the_search_range_the_edge_is_returned(upright):
    estimate, _ = upright.fit(search=(5000.0, 10000.0), step=STEP_A)
    high = upright.true_defocus_A > 10000.0
    assert high.any() and np.all(estimate[high] == 10000.0)
    assert _rmse(estimate[~high], upright.true_defocus_A[~high]) < 10.0


def test_turned_particles(tmp_path):
    # Uniform psi: the reference is turned onto each particle by interpolation, which blurs it a little.
    particles = _simulate(tmp_path, n_particles=60)
    estimate, _ = particles.fit(search=SEARCH_A, step=STEP_A)
    assert _rmse(estimate, particles.true_defocus_A) < 60.0
    # The angles matter: with the reference turned the wrong way the fit is lost.
    wrong = dataclasses.replace(particles.alignment, psi=-particles.alignment.psi)
    lost = fit_defocus(particles.batches(), wrong, particles.ctf, PIXEL_A, BOX, search=SEARCH_A, step=STEP_A)[0]
    assert _rmse(lost, particles.true_defocus_A) > 1000.0


def test_noisy_particles(tmp_path):
    particles = _simulate(tmp_path, snr=0.3, n_particles=120)
    estimate, peak = particles.fit()
    assert _rmse(estimate, particles.true_defocus_A) < 400.0
    assert np.median(np.abs(estimate - particles.true_defocus_A)) < 250.0
    assert np.all(np.isfinite(peak))


def test_astigmatism_of_the_star_is_kept(astigmatic):
    estimate, _ = astigmatic.fit(search=SEARCH_A, step=STEP_A)
    assert _rmse(estimate, astigmatic.true_defocus_A) < 15.0
    # Proof that it is used: with the same mean but no astigmatism the fit is far worse.
    mean = 0.5 * (astigmatic.ctf.defocus_u + astigmatic.ctf.defocus_v)
    flat = dataclasses.replace(astigmatic.ctf, defocus_u=mean, defocus_v=mean)
    assert _rmse(astigmatic.fit(ctf=flat, search=SEARCH_A, step=STEP_A)[0], astigmatic.true_defocus_A) > 200.0
    # And so is its angle: turned by 90°, U and V swap places.
    turned = dataclasses.replace(astigmatic.ctf, defocus_angle=astigmatic.ctf.defocus_angle + 90.0)
    assert _rmse(astigmatic.fit(ctf=turned, search=SEARCH_A, step=STEP_A)[0], astigmatic.true_defocus_A) > 200.0


def test_noisy_astigmatic_particles(tmp_path):
    particles = _simulate(tmp_path, snr=0.3, n_particles=120, astigmatism=4000.0)
    kept = _rmse(particles.fit()[0], particles.true_defocus_A)
    mean = 0.5 * (particles.ctf.defocus_u + particles.ctf.defocus_v)
    flat = _rmse(particles.fit(ctf=dataclasses.replace(particles.ctf, defocus_u=mean, defocus_v=mean))[0],
                 particles.true_defocus_A)
    assert kept < 400.0 and kept < 0.7 * flat, (kept, flat)


def test_particles_match_better_than_noise(upright):
    # The peak is what the outlier detector reads: pure noise of the same power scores below every particle.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=upright.images.shape).astype(np.float32) * upright.images.std(axis=(1, 2))[:, None, None]
    mixed = dataclasses.replace(upright, images=np.where(np.arange(len(noise))[:, None, None] % 2 == 0,
                                                         upright.images, noise))
    _, peak = mixed.fit(search=SEARCH_A, step=STEP_A)
    assert peak[0::2].min() > peak[1::2].max()
