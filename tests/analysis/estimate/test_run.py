"""`estimate` (the composition of the stages): from a trained model and particles to the job's new STAR
columns, report and stacks.

A tiny model (one epoch on 100 particles) is trained once per module as the job trains it
(`pipeline.train_for_job`); `estimate` is then called the way `pipeline.run_job` calls it.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
from sklearn.metrics import roc_auc_score
import pytest

from relion_canon.analysis.metrics import align_angles
from relion_canon.analysis.estimate import CANONICAL_STACK, CLASS_AVERAGES, N_EXAMPLES, estimate
from relion_canon.analysis.estimate.results import COLUMNS as ALL_COLUMNS, REFERENCE_COLUMNS
from relion_canon.context import QUIET
from relion_canon.io.star import ParticleStar, read_star, write_star
from relion_canon.job import JobConfig, train_for_job
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 150
BOX = 32


# Without a reference map (--ref) the job writes no 3-D angles (tests/analysis/estimate/test_run_reference.py).
COLUMNS = tuple(c for c in ALL_COLUMNS if c not in REFERENCE_COLUMNS)


def _train(star: ParticleStar, out: Path) -> Path:
    model_path, _ = train_for_job(star, out, JobConfig(epochs=1, train_particles=100), resume=False, context=QUIET)
    return model_path


def _estimate(star: ParticleStar, model_path: Path, out: Path, **config):
    return estimate(star, model_path, out, JobConfig(**config), context=QUIET)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimates")
    simulate_dataset(SimulationConfig(n_particles=N, box=BOX, pixel_size=4.0, snr=0.5, junk_fraction=0.1,
                                      phantom_seed=7, seed=3), root / "sim")
    star = read_star(root / "sim" / "particles.star")
    return star, read_ground_truth(root / "sim"), _train(star, root / "train"), root


@pytest.fixture(scope="module")
def refined(sim):
    star, _, model_path, root = sim
    # One reference for all particles (--classes 1): the path these tests pin; the classifier is tested below.
    return _estimate(star, model_path, root / "refined", classes=1, write_canonical=True)


@pytest.fixture(scope="module")
def network_only(sim):
    star, _, model_path, root = sim
    return _estimate(star, model_path, root / "network", refine=False, write_canonical=True)


def test_columns_and_shapes(sim, refined, network_only):
    star = sim[0]
    # Without classes there is no class number, and without refinement no alignment score and no origins.
    assert list(refined.columns) == [c for c in COLUMNS if c != "rlnClassNumber"]
    assert list(network_only.columns) == [c for c in COLUMNS if c not in (
        "rlnClassNumber", "rlnCanonAlignmentScore", "rlnOriginXAngst", "rlnOriginYAngst")]
    for est in (refined, network_only):
        for label, values in est.columns.items():
            assert values.shape == (N,), label
            if label != "rlnCanonCanonicalImage":
                assert np.all(np.isfinite(values.astype(np.float64))), label
        assert est.latent.ndim == 2 and est.latent.shape[0] == N
        assert est.psi_model.shape == (N,)
        ctf = star.ctf_params()
        np.testing.assert_allclose(est.defocus_input, 0.5 * (ctf.defocus_u + ctf.defocus_v))
        assert len(est.example_index) == N_EXAMPLES and np.all(np.diff(est.example_index) > 0)
        assert est.example_inputs.shape[0] == N_EXAMPLES and est.example_canonical.shape[0] == N_EXAMPLES
        assert set(est.outlier_scores) == set(est.report["outliers"]["detectors"])
    assert refined.columns["rlnCanonIsOutlier"].dtype == np.int64


def test_psi_range_and_prior(refined, network_only):
    for est in (refined, network_only):
        psi = est.columns["rlnAnglePsi"]
        assert np.all((psi >= -180.0) & (psi < 180.0))
        np.testing.assert_array_equal(est.columns["rlnAnglePsiPrior"], psi)
    # Without refinement the angles are the network's own.
    np.testing.assert_array_equal(network_only.columns["rlnAnglePsi"], network_only.psi_model)


def test_refined_angles_match_the_truth(sim, refined):
    truth = sim[1]
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    fit = align_angles(refined.columns["rlnAnglePsi"][good], truth["rlnAnglePsi"].to_numpy()[good])
    assert fit.rmse < 5.0, fit.rmse


def test_weight_is_exp_defocus_in_um_minus_one(refined, network_only):
    for est in (refined, network_only):
        defocus = est.columns["rlnCanonDefocus"]
        np.testing.assert_allclose(est.columns["rlnParticleFigureOfMerit"], np.expm1(defocus / 1e4), rtol=1e-12)
    # With refinement the defocus is the fit to the reference, else paper B's latent mapping.
    assert refined.report["defocus"]["method"] == "ctf_fit_to_reference"
    assert network_only.report["defocus"]["method"] == "latent_radius_quantiles"
    np.testing.assert_array_equal(network_only.columns["rlnCanonDefocus"], network_only.columns["rlnCanonDefocusLatent"])


def test_fitted_defocus_is_near_the_truth(sim, refined):
    truth = sim[1]
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    true = 0.5 * (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy()
    error = (refined.columns["rlnCanonDefocus"] - true)[good]
    assert np.median(np.abs(error)) < 1500.0  # Å


@pytest.mark.parametrize("threshold", [1.0, 2.5])
def test_outlier_flag_follows_the_threshold(sim, refined, threshold):
    star, _, model_path, root = sim
    est = _estimate(star, model_path, root / f"threshold{threshold}", classes=1, outlier_threshold=threshold)
    z, flag = est.columns["rlnParticleSelectZScore"], est.columns["rlnCanonIsOutlier"]
    # The scores do not depend on the threshold; the flag is exactly "score above it".
    np.testing.assert_array_equal(z, refined.columns["rlnParticleSelectZScore"])
    np.testing.assert_array_equal(flag, (z > threshold).astype(np.int64))
    assert 0 < flag.sum() < N
    assert est.report["outliers"]["threshold"] == threshold
    assert est.report["outliers"]["n_flagged"] == int(flag.sum())


def test_refined_canonical_image_is_the_class_average(sim, refined):
    out = sim[3] / "refined"
    path = out / CLASS_AVERAGES
    with mrcfile.open(path) as m:
        assert (int(m.header.nz), int(m.header.nx), int(m.header.ny)) == (1, BOX, BOX)
        stack = m.data.reshape(1, BOX, BOX).copy()  # mrcfile gives a one-image stack as 2-D
    np.testing.assert_allclose(stack[0], refined.class_averages[0], atol=1e-6)
    assert (refined.columns["rlnCanonCanonicalImage"] == f"000001@{path}").all()
    assert not (out / CANONICAL_STACK).exists()


def test_network_canonical_images_are_written_per_particle(sim, network_only):
    out = sim[3] / "network"
    path = out / CANONICAL_STACK
    with mrcfile.open(path) as m:
        stack = m.data.copy()
    assert stack.shape == (N, BOX, BOX)
    names = network_only.columns["rlnCanonCanonicalImage"]
    assert list(names) == [f"{i + 1:06d}@{path}" for i in range(N)]
    # Row i of the stack is particle i's canonical image (the ones shown in the report, computed apart).
    np.testing.assert_allclose(stack[network_only.example_index], network_only.example_canonical, atol=1e-4)
    assert network_only.class_averages == {} and not (out / CLASS_AVERAGES).exists()


def test_no_stacks_unless_asked(sim):
    star, _, model_path, root = sim
    est = _estimate(star, model_path, root / "quiet", refine=False)
    assert "rlnCanonCanonicalImage" not in est.columns
    assert not (root / "quiet" / CANONICAL_STACK).exists()


@pytest.fixture(scope="module")
def two_classes(sim):
    # As after a Class2D with two classes whose frames differ, one of them turning the other way.
    star, truth, _, root = sim
    classes = np.where(np.arange(N) % 3 == 0, 2, 1)
    true = truth["rlnAnglePsi"].to_numpy()
    given = _wrap(np.where(classes == 1, true + 30.0, -true - 70.0))
    path = write_star(star.with_columns({"rlnClassNumber": classes, "rlnAnglePsi": given}), root / "classes.star")
    return read_star(path), classes, given


def test_per_class_angles_are_in_each_classes_input_frame(sim, two_classes):
    _, truth, model_path, root = sim
    star, classes, given = two_classes
    est = _estimate(star, model_path, root / "per_class", per_class=True, write_canonical=True)
    psi = est.columns["rlnAnglePsi"]
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    assert set(est.report["classes"]) == {"1", "2"}
    signs = []
    for number in (1, 2):
        rows = (classes == number) & good
        info = est.report["classes"][str(number)]
        assert info["n_particles"] == int((classes == number).sum())
        signs.append(info["frame"]["sign"])
        assert np.sqrt(np.mean(_wrap(psi[rows] - given[rows]) ** 2)) < 5.0, number
    assert signs[0] == -signs[1]  # class 2's input frame turns the other way
    # One class average per class, and each particle named with its own class's.
    path = root / "per_class" / CLASS_AVERAGES
    with mrcfile.open(path, header_only=True) as m:
        assert int(m.header.nz) == 2
    names = est.columns["rlnCanonCanonicalImage"]
    assert (names[classes == 1] == f"000001@{path}").all() and (names[classes == 2] == f"000002@{path}").all()


def test_per_class_frame_without_refinement_is_the_reported_transform(sim, two_classes):
    # Without refinement a class's angles are the network's turned into the class frame: exactly sign·ψ − offset.
    _, _, model_path, root = sim
    star, classes, given = two_classes
    est = _estimate(star, model_path, root / "per_class_network", per_class=True, refine=False)
    psi = est.columns["rlnAnglePsi"]
    for number in (1, 2):
        rows = classes == number
        frame = est.report["classes"][str(number)]["frame"]
        np.testing.assert_allclose(_wrap(psi[rows] - _wrap(frame["sign"] * est.psi_model[rows] - frame["offset_deg"])),
                                   0.0, atol=1e-9)
        # The transform is the best one: fitted again, the output is already in the class's frame.
        refit = align_angles(psi[rows], given[rows])
        assert refit.sign == 1 and abs(refit.offset) < 1e-2
        assert refit.rmse == pytest.approx(frame["rmse_vs_input_deg"], abs=1e-3)


def test_per_class_is_ignored_without_class_numbers(sim, refined):
    star, _, model_path, root = sim
    est = _estimate(star, model_path, root / "no_classes", per_class=True)
    assert set(est.report["classes"]) == {"0"}
    np.testing.assert_array_equal(est.columns["rlnAnglePsi"], refined.columns["rlnAnglePsi"])


@pytest.fixture(scope="module")
def no_ctf(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_ctf")
    simulate_dataset(SimulationConfig(n_particles=120, box=BOX, pixel_size=4.0, snr=1.0, ctf=False, junk_fraction=0.1,
                                      phantom_seed=7, seed=4), root / "sim")
    star = read_star(root / "sim" / "particles.star")
    return star, _train(star, root / "train"), root


def test_without_ctf_no_defocus_and_no_weight(no_ctf):
    star, model_path, root = no_ctf
    est = _estimate(star, model_path, root / "plain")
    for label in ("rlnCanonDefocus", "rlnCanonDefocusLatent", "rlnParticleFigureOfMerit"):
        assert label not in est.columns
    assert est.defocus_input is None and est.report["defocus"]["method"] is None
    assert np.all(np.isfinite(est.columns["rlnParticleSelectZScore"]))


def test_without_ctf_a_given_range_maps_the_latent(no_ctf):
    star, model_path, root = no_ctf
    lo, hi = 5000.0, 25000.0
    est = _estimate(star, model_path, root / "range", defocus_range=(lo, hi))
    defocus = est.columns["rlnCanonDefocus"]
    assert est.report["defocus"]["method"] == "latent_radius_quantiles"
    assert np.all((defocus >= lo - 1e-6) & (defocus <= hi + 1e-6)) and np.ptp(defocus) > 0.5 * (hi - lo)
    np.testing.assert_allclose(est.columns["rlnParticleFigureOfMerit"], np.expm1(defocus / 1e4))


@pytest.fixture(scope="module")
def classified(sim):
    star, _, model_path, root = sim
    return _estimate(star, model_path, root / "classified", classes=None)


def test_classes_auto_classifies_and_reports_each_class(classified):
    assert list(classified.columns) == [c for c in COLUMNS if c != "rlnCanonCanonicalImage"]
    numbers = classified.columns["rlnClassNumber"]
    assert numbers.min() == 1 and set(np.unique(numbers)) == set(classified.class_averages)
    report = classified.report
    assert report["classification"]["n_classes"] == len(classified.class_averages)
    assert report["classification"]["n_views_found"] + report["classification"]["n_junk_classes"] == \
        report["classification"]["n_classes"]
    for number, facts in report["classes"].items():
        assert facts["n_particles"] == int((numbers == int(number)).sum())
        assert 0 < facts["fraction"] <= 1 and facts["resolution_A"] > 0 and isinstance(facts["is_junk"], bool)
        if facts["is_junk"]:  # every particle of a junk class is flagged
            assert classified.columns["rlnCanonIsOutlier"][numbers == int(number)].all()


def test_the_classifier_writes_origins_near_zero_on_a_centred_set(sim, classified):
    truth = sim[1]
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    origin = np.c_[classified.columns["rlnOriginXAngst"], classified.columns["rlnOriginYAngst"]][good]
    # Centred particles (no shifts simulated): the offset prior keeps a noisy shift search near zero.
    assert np.median(np.hypot(*origin.T)) < 0.5 * 4.0


def test_the_classifier_scores_junk(sim, classified):
    truth = sim[1]
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    assert roc_auc_score(junk, classified.columns["rlnParticleSelectZScore"]) > 0.85
