"""Refinement against a learnt reference: angles, shifts and defocus come back from simulated particles."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.alignment import AlignmentConfig, align_particles
from relion_canon.analysis.ctf_fit import fit_defocus
from relion_canon.analysis.metrics import align_angles
from relion_canon.context import RunContext
from relion_canon.io.star import read_star
from relion_canon.preprocess import PreprocessConfig
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset
from relion_canon.train.data import ParticleBatches


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _load(root, **overrides):
    cfg = SimulationConfig(**{"n_particles": 300, "box": 48, "pixel_size": 3.0, "snr": 0.3, "junk_fraction": 0.0,
                              "phantom_seed": 7, "seed": 5, **overrides})
    simulate_dataset(cfg, root)
    star = read_star(root / "particles.star")
    data = ParticleBatches(star, PreprocessConfig())
    images = data[np.arange(len(data))]["image"][:, 0].numpy()

    def batches():
        for start in range(0, len(images), 128):
            idx = np.arange(start, min(start + 128, len(images)))
            yield idx, images[idx]

    return star, read_ground_truth(root), data, batches


@pytest.fixture(scope="module")
def centred(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("centred"))


def test_angles_from_random_start(centred):
    star, truth, data, batches = centred
    al = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box,
                         config=AlignmentConfig(rounds=12))
    fit = align_angles(al.psi, truth["rlnAnglePsi"].to_numpy())
    assert fit.rmse < 3.0, fit.rmse
    assert al.history and al.history[-1]["psi_change_rms_deg"] < al.history[0]["psi_change_rms_deg"]
    assert al.reference.shape == (data.box, data.box) and np.all(np.isfinite(al.score))


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_reference_from_a_subset_then_every_particle_searched(centred, cache_bytes):
    # Rounds on 100 of the 300 particles, then two passes over all: every particle is aligned as well as
    # when all build the reference, in the initial angles' frame, whether the images are cached or re-read.
    star, truth, data, batches = centred
    true = truth["rlnAnglePsi"].to_numpy()
    start = true + 40.0 + np.random.default_rng(0).normal(0, 15, len(true))
    whole = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, start)
    al = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, start,
                         AlignmentConfig(reference_particles=100, cache_bytes=cache_bytes))
    fit = align_angles(al.psi, true)
    assert fit.sign == 1 and abs(fit.offset - 40.0) < 3.0
    assert fit.rmse < 1.2 * align_angles(whole.psi, true).rmse + 0.1, (fit.rmse, align_angles(whole.psi, true).rmse)
    # Particles outside the subset (two thirds) were searched too, not left at their 15°-noisy starting angles.
    assert np.mean(np.abs(fit.errors) < 5.0) > 0.95
    assert np.all(np.isfinite(al.score)) and np.all(al.score != 0)
    assert [h["round"] for h in al.history] == list(range(1, len(al.history) + 1)) and len(al.history) >= 4


def test_keeps_the_frame_of_the_initial_angles(centred):
    # Started from the truth + 40° (+ noise), the result stays in that frame: offset 40°, sign +1.
    star, truth, data, batches = centred
    true = truth["rlnAnglePsi"].to_numpy()
    start = true + 40.0 + np.random.default_rng(0).normal(0, 15, len(true))
    al = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, start)
    fit = align_angles(al.psi, true)
    assert fit.sign == 1 and abs(fit.offset - 40.0) < 3.0 and fit.rmse < 3.0


def test_without_ctf_correction_the_ctf_blurs_alignment(centred):
    # The CTF-aware comparison must beat treating the particles as CTF-free (a test that could fail).
    star, truth, data, batches = centred
    true = truth["rlnAnglePsi"].to_numpy()
    start = true + np.random.default_rng(1).normal(0, 15, len(true))
    with_ctf = align_angles(align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box,
                                            start).psi, true).rmse
    without = align_angles(align_particles(batches, len(data), None, data.pixel_size, data.box, start).psi, true).rmse
    assert with_ctf < without


def test_defocus_fit_to_the_reference(centred):
    star, truth, data, batches = centred
    true = truth["rlnAnglePsi"].to_numpy()
    al = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, true)
    # The STAR's defocus is moved by +3000 Å: the fit must find the images' own defocus, not the STAR's.
    ctf = star.ctf_params()
    shifted = type(ctf)(**{**ctf.__dict__, "defocus_u": ctf.defocus_u + 3000, "defocus_v": ctf.defocus_v + 3000})
    estimate, peak = fit_defocus(batches, al, shifted, data.pixel_size, data.box)
    truth_defocus = 0.5 * (truth["rlnDefocusU"].to_numpy() + truth["rlnDefocusV"].to_numpy())
    rmse_um = np.sqrt(np.mean((estimate - truth_defocus) ** 2)) / 1e4
    assert rmse_um < 0.15, rmse_um
    assert np.all(np.isfinite(peak))


def test_translational_search_finds_shifts(tmp_path):
    star, truth, data, batches = _load(tmp_path, shift_sigma=6.0, n_particles=200)
    true = truth["rlnAnglePsi"].to_numpy()
    start = true + np.random.default_rng(2).normal(0, 10, len(true))
    al = align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, start,
                         AlignmentConfig(max_shift=6.0, shift_from_round=0))
    # RELION moves content by −origin: the particle's centre sits at box//2 − origin/pixel size.
    origin_px = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 3.0
    found = al.shift - al.shift.mean(axis=0)  # the reference may settle a little off-centre
    expected = -origin_px - (-origin_px).mean(axis=0)
    assert np.sqrt(np.mean((found - expected) ** 2)) < 1.0
    assert align_angles(al.psi, true).rmse < 4.0


def test_stops_on_request_before_a_round(centred):
    star, truth, data, batches = centred
    context = RunContext(progress=False, should_stop=lambda: True)
    with pytest.raises(InterruptedError, match="alignment stopped on request"):
        align_particles(batches, len(data), star.ctf_params(), data.pixel_size, data.box, context=context)


@pytest.mark.parametrize("size", [64, 36])  # the full box, and cropped to a band
def test_shift_search_peak_is_the_prior_weighted_peak_of_the_whole_correlation(size):
    import torch

    from relion_canon.analysis.alignment import ShiftSearch
    from relion_canon.geometry import shift_peak_and_height

    box, search = 64, ShiftSearch(max_px=5.0, sigma_px=1.5)
    g = torch.Generator().manual_seed(size)
    particle, reference = torch.randn(2, 6, size, size, generator=g, dtype=torch.float64)
    cross = torch.fft.rfft2(particle) * torch.fft.rfft2(torch.roll(reference, (2, -1), (-2, -1))).conj()
    shift, height = search.peak(cross, box)
    # The peak of the whole correlation (at box units) plus the log prior, found over every sample.
    cc = torch.fft.irfft2(cross, s=(size, size)) * (size / box) ** 2
    r = torch.fft.fftfreq(size, dtype=torch.float64) * box
    prior = -(r[None, :] ** 2 + r[:, None] ** 2) / (2 * search.sigma_px**2) / box**2
    expected_shift, expected_height = shift_peak_and_height(cc + prior, search.max_px * size / box)
    torch.testing.assert_close(shift, expected_shift * (box / size))
    torch.testing.assert_close(height, expected_height)


def test_shift_search_against_every_reference_is_each_pairs_peak():
    import torch

    from relion_canon.analysis.alignment import ShiftSearch

    search = ShiftSearch(max_px=4.0, sigma_px=2.0)
    g = torch.Generator().manual_seed(1)
    spectra = torch.fft.rfft2(torch.randn(5, 36, 36, generator=g))
    references = torch.fft.rfft2(torch.randn(4, 36, 36, generator=g))
    shift, height = search.peaks_against(spectra, references, 64)
    pair_shift, pair_height = search.peak((spectra[:, None] * references[None].conj()).flatten(0, 1), 64)
    torch.testing.assert_close(shift, pair_shift.reshape(5, 4, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(height, pair_height.reshape(5, 4), atol=1e-6, rtol=1e-4)

