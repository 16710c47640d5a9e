"""canonical_network: each particle's own canonical image from a decoder trained on the refined angles."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from relion_canon.analysis.estimate import estimate
from relion_canon.analysis.estimate import canonical_network
from relion_canon.analysis.estimate.canonical_network import epochs_for, labelled, training_rows
from relion_canon.analysis.evaluation.frame import canonical_errors, fit_canonical_frame
from relion_canon.context import QUIET
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star
from relion_canon.job import JobConfig, train_for_job
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 200


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # A third of the job's training budget keeps the test fast; the decoder still learns the particles.
    patch = pytest.MonkeyPatch()
    patch.setattr(canonical_network, "STEPS", 300)
    root = tmp_path_factory.mktemp("canonical_network")
    simulate_dataset(SimulationConfig(n_particles=N, box=32, pixel_size=4.0, snr=1.0, junk_fraction=0.1,
                                      shift_sigma=4.0, phantom_seed=7, seed=5), root / "sim")
    star = read_star(root / "sim" / "particles.star")
    model_path, _ = train_for_job(star, root / "train", JobConfig(epochs=1, train_particles=100), resume=False,
                                  context=QUIET)
    est = estimate(star, model_path, root / "out", JobConfig(classes=1, canonical_from="network"), context=QUIET)
    patch.undo()
    return est, read_ground_truth(root / "sim"), root


def test_one_image_per_particle_in_canonical_mrcs(job):
    est, _, root = job
    names = est.columns["rlnCanonCanonicalImage"]
    stack = root / "out" / "canonical.mrcs"
    assert len(set(names)) == N and all(str(name).endswith(f"@{stack}") for name in names)
    with mrcfile.open(stack, permissive=True) as mrc:
        assert mrc.data.shape == (N, 32, 32)
    info = est.report["canonical_images"]
    assert info["from"] == "network" and 10 <= info["train_particles"] <= N
    assert est.report["seconds"]["canonical_images"] > 0


def test_images_are_the_particles_in_one_frame_and_their_own(job):
    """Against the clean truth, with one turn and mirror fitted for the whole (one-class) set, the decoder's
    images match far better than chance (2 = uncorrelated), and they differ from particle to particle."""
    est, truth, root = job
    good = np.flatnonzero(truth["rlnCanonIsJunk"].to_numpy() == 0)
    images = ParticleSource.from_stack(root / "out" / "canonical.mrcs").read(good).astype(np.float64)
    clean = ParticleSource.from_stack(root / "sim" / "ground_truth_clean.mrcs").read(good).astype(np.float64)
    rotation, mirrored = fit_canonical_frame(images, clean)
    mse = canonical_errors(images, clean, rotation, mirrored)
    assert np.median(mse) < 0.6
    assert np.std(images, axis=0).mean() > 0.01 * np.std(images)


def test_epochs_keep_the_steps_flat():
    assert epochs_for(64 * 1000) == 1 and epochs_for(6400) == canonical_network.STEPS // 100
    assert epochs_for(10) * 10 >= canonical_network.STEPS * canonical_network.TRAIN_BATCH


def test_training_rows_are_good_particles_capped():
    good = np.zeros(50, bool)
    good[::2] = True
    assert np.array_equal(training_rows(good, 100, 0), np.arange(0, 50, 2))
    rows = training_rows(good, 10, 0)
    assert rows.size == 10 and good[rows].all() and np.all(np.diff(rows) > 0)


def test_labelled_gives_refined_angles_and_origins(tmp_path):
    simulate_dataset(SimulationConfig(n_particles=20, box=32, shift_sigma=2.0, seed=1), tmp_path)
    star = read_star(tmp_path / "particles.star")
    psi = np.linspace(-170, 170, 20)
    origin = np.stack([np.arange(20.0), -np.arange(20.0)], axis=1)
    out = labelled(star, psi, origin)
    assert np.allclose(out.particles["rlnAnglePsi"], psi)
    assert np.allclose(out.origins_angstrom(), origin)
    no_search = labelled(star, psi, None)
    assert np.allclose(no_search.origins_angstrom(), 0.0)
