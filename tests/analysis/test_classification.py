"""relion_canon.analysis.classification on small simulated multi-view sets: classes of one view each, angles
in each class's frame, one class for one view."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.classification import ClassificationConfig, classify_particles, default_n_classes
from relion_canon.analysis.metrics import align_angles
from relion_canon.context import RunContext
from relion_canon.io.star import read_star
from relion_canon.preprocess import PreprocessConfig
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset
from relion_canon.train.data import ParticleBatches

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _classify(root, config=ClassificationConfig()):
    return _classify_with(root, config, None)


def _classify_with(root, config, junk_rule, apart_rule=None):
    star = read_star(root / "particles.star")
    images = ParticleBatches(star, PreprocessConfig())

    def batches(which=None):
        rows = np.arange(len(star)) if which is None else which
        for start in range(0, len(rows), 256):
            pos = rows[start:start + 256]
            yield pos, images[pos]["image"][:, 0].numpy()

    return classify_particles(batches, len(star), star.ctf_params(), images.pixel_size, images.box, config=config,
                              junk_rule=junk_rule, apart_rule=apart_rule)


@pytest.fixture(scope="module")
def three_views(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "sim"
    simulate_dataset(SimulationConfig(n_particles=360, box=32, pixel_size=5.0, views=3, snr=0.5, junk_fraction=0.0,
                                      seed=4), root)
    return root, read_ground_truth(root), _classify(root, ClassificationConfig(n_classes=8))


def test_each_class_holds_one_view(three_views):
    _, truth, found = three_views
    view = truth["rlnCanonViewId"].to_numpy()
    purity = sum(np.bincount(view[found.class_index == c]).max() for c in range(found.n_classes)) / len(view)
    assert purity >= 0.95, purity
    assert 3 <= found.n_classes < 8  # classes of one view were merged
    assert found.references.shape == (found.n_classes, 32, 32)
    assert np.all(np.diff(np.bincount(found.class_index)) <= 0)  # largest class first


def test_angles_are_consistent_within_each_class(three_views):
    _, truth, found = three_views
    for c in range(found.n_classes):
        rows = np.flatnonzero(found.class_index == c)
        if len(rows) >= 20:
            fit = align_angles(found.psi_deg[rows], truth["rlnAnglePsi"].to_numpy()[rows])
            # A view that looks nearly the same turned by half a turn can send a particle 180° off: judged by
            # the median and the share within 10°, not by an rMSE that one such particle dominates.
            assert fit.median < 3.0, (c, fit.median)
            assert np.mean(np.abs(fit.errors) < 10.0) >= 0.95, c


def test_off_centre_particles_find_their_view(tmp_path):
    # Shifts of 2 px (sd) on a 32 px box: a search about the box centre alone, or against the current
    # class only, leaves the far-off particles in a blurred class of their own.
    simulate_dataset(SimulationConfig(n_particles=300, box=32, pixel_size=5.0, views=2, snr=0.5, shift_sigma=10.0,
                                      junk_fraction=0.0, seed=7), tmp_path / "sim")
    truth = read_ground_truth(tmp_path / "sim")
    found = _classify(tmp_path / "sim", ClassificationConfig(n_classes=6))
    view = truth["rlnCanonViewId"].to_numpy()
    purity = sum(np.bincount(view[found.class_index == c]).max() for c in range(found.n_classes)) / len(view)
    assert purity >= 0.95, purity
    # RELION moves content by −origin: the particle's centre sits at box//2 − origin/pixel size.
    expected = -np.c_[truth["rlnOriginXAngst"], truth["rlnOriginYAngst"]].astype(float) / 5.0
    for c in range(found.n_classes):
        rows = np.flatnonzero(found.class_index == c)
        if len(rows) >= 20:
            # The class average may sit off-centre by some d in its own frame; each particle's shift then
            # carries d turned by its psi: fitted per class as a + B·(cos ψ, sin ψ).
            psi = np.deg2rad(found.psi_deg[rows])
            design = np.c_[np.ones(len(rows)), np.cos(psi), np.sin(psi)]
            error = found.shift_px[rows] - expected[rows]
            error -= design @ np.linalg.lstsq(design, error, rcond=None)[0]
            assert np.median(np.hypot(*error.T)) < 0.5, c


def test_one_view_ends_in_one_class(tmp_path):
    simulate_dataset(SimulationConfig(n_particles=240, box=32, pixel_size=5.0, snr=0.5, junk_fraction=0.0, seed=5),
                     tmp_path / "sim")
    found = _classify(tmp_path / "sim", ClassificationConfig(n_classes=6))
    assert found.n_classes == 1
    assert found.converged


def test_a_stop_request_stops_it(tmp_path):
    simulate_dataset(SimulationConfig(n_particles=60, box=32, pixel_size=5.0, seed=6), tmp_path / "sim")
    star = read_star(tmp_path / "sim" / "particles.star")
    images = ParticleBatches(star, PreprocessConfig())

    def batches():
        yield np.arange(len(star)), images[np.arange(len(star))]["image"][:, 0].numpy()

    with pytest.raises(InterruptedError, match="classification stopped on request"):
        classify_particles(batches, len(star), star.ctf_params(), images.pixel_size, images.box,
                           context=RunContext(should_stop=lambda: True))


def test_the_default_number_of_classes_follows_the_particles():
    config = ClassificationConfig()
    assert default_n_classes(50, config) == 1
    assert default_n_classes(2000, config) == 20
    assert default_n_classes(10**6, config) == config.max_classes
    assert default_n_classes(2000, ClassificationConfig(n_classes=7)) == 7


def test_convergence_spares_the_few_angles_that_flip():
    import torch

    from relion_canon.analysis.classification import _settled_rms

    change = torch.full((1000,), 0.1)
    change[:4] = torch.tensor([180.0, -170.0, 90.0, 45.0])  # a few noisy particles' best turn flips
    assert float(torch.sqrt((change**2).mean())) > 5.0  # what the plain rms says
    assert _settled_rms(change, 5) == pytest.approx(0.1, rel=1e-5)
    assert _settled_rms(change, 3) == pytest.approx(((45.0**2 + 996 * 0.01) / 997) ** 0.5, rel=1e-5)
    assert _settled_rms(change[:2], 5) == 0.0
