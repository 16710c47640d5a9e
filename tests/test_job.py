"""The whole job (`relion-canon run`, and what the RELION/cryoSPARC front doors call) on simulated particles."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from relion_canon.analysis.metrics import align_angles
from relion_canon.cli.main import cli
from relion_canon.io.mrc import write_stack
from relion_canon.io.star import read_star, write_star
from relion_canon.context import QUIET
from relion_canon.job import JobConfig, run_job
from relion_canon.preprocess.fourier import fourier_resample
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

NEW = ("rlnAnglePsi", "rlnAnglePsiPrior", "rlnCanonDefocus", "rlnCanonDefocusLatent", "rlnParticleFigureOfMerit",
       "rlnParticleSelectZScore", "rlnCanonIsOutlier", "rlnCanonAlignmentScore")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("job") / "sim"
    simulate_dataset(SimulationConfig(n_particles=300, box=48, pixel_size=3.0, snr=0.3, junk_fraction=0.15,
                                      phantom_seed=7, seed=3), root)
    return root


@pytest.fixture(scope="module")
def job(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "job"
    result = run_job(sim / "particles.star", out, JobConfig(epochs=1, train_particles=200, write_canonical=True),
                     context=QUIET)
    return result


def test_outputs_keep_every_input_column_and_add_ours(sim, job):
    given = read_star(sim / "particles.star").particles
    out = read_star(job.particles_star).particles
    assert list(out.columns[: len(given.columns)]) == list(given.columns)
    assert (out[given.columns].astype(str).to_numpy() == given.astype(str).to_numpy()).all()
    for label in NEW:
        assert label in out.columns
    assert out["rlnAnglePsi"].between(-180, 180, inclusive="left").all()
    assert np.allclose(out["rlnParticleFigureOfMerit"], np.exp(out["rlnCanonDefocus"] / 1e4) - 1)


def test_accuracy_on_simulated_particles(sim, job):
    truth = read_ground_truth(sim)
    out = read_star(job.particles_star).particles
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    psi = align_angles(out["rlnAnglePsi"].to_numpy()[~junk], truth["rlnAnglePsi"].to_numpy()[~junk])
    assert psi.rmse < 3.0, psi.rmse
    true_defocus = 0.5 * (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy()
    assert np.sqrt(np.mean((out["rlnCanonDefocus"].to_numpy() - true_defocus)[~junk] ** 2)) < 1500  # Å
    assert roc_auc_score(junk, out["rlnParticleSelectZScore"]) > 0.9


def test_selected_and_rejected_split_by_the_flag(job):
    out = read_star(job.particles_star).particles
    sel = read_star(job.selected_star).particles
    rej = read_star(job.rejected_star).particles
    assert len(sel) + len(rej) == len(out)
    assert (sel["rlnCanonIsOutlier"] == 0).all() and (rej["rlnCanonIsOutlier"] == 1).all()
    # Rejected: a Z-score above the threshold, or a place in a class the job judged junk (as a RELION user drops
    # a junk class after Class2D).
    report = json.loads((job.out_dir / "report.json").read_text())
    junk_classes = [int(n) for n, facts in report["classes"].items() if facts.get("is_junk")]
    assert ((rej["rlnParticleSelectZScore"] > JobConfig().outlier_threshold)
            | rej["rlnClassNumber"].isin(junk_classes)).all()
    assert (sel["rlnParticleSelectZScore"] <= JobConfig().outlier_threshold).all()
    assert not sel["rlnClassNumber"].isin(junk_classes).any()


def test_report_figures_model_and_canonical_images(job):
    report = json.loads((job.out_dir / "report.json").read_text())
    for key in ("outliers", "symmetry", "defocus", "seconds", "training_history", "config"):
        assert key in report
    assert report["outliers"]["threshold"] == JobConfig().outlier_threshold
    assert report["resources"]["peak_rss_mb"] > 100  # the interpreter and torch alone hold more
    assert job.logfile.stat().st_size > 0 and job.model_path.exists()
    n_classes = report["classification"]["n_classes"]
    with mrcfile.open(job.out_dir / "class_averages.mrcs", header_only=True) as m:
        assert (int(m.header.nz), int(m.header.nx)) == (n_classes, 48)  # one average per class found
    out = read_star(job.particles_star).particles
    # Each particle's canonical image is its class's average.
    want = [f"{c:06d}@{job.out_dir / 'class_averages.mrcs'}" for c in out["rlnClassNumber"]]
    assert list(out["rlnCanonCanonicalImage"]) == want


def test_canonical_images_from_the_network_without_refinement(sim, job, tmp_path):
    result = run_job(sim / "particles.star", tmp_path / "net", JobConfig(model_path=str(job.model_path), refine=False,
                     write_canonical=True), context=QUIET)
    with mrcfile.open(tmp_path / "net" / "canonical.mrcs", header_only=True) as m:
        assert (int(m.header.nz), int(m.header.nx)) == (300, 48)  # the network's 32 px output, padded back
    names = read_star(result.particles_star).particles["rlnCanonCanonicalImage"]
    assert names.iloc[0].startswith("000001@") and names.iloc[-1].startswith("000300@")


def test_apply_an_existing_model(sim, job, tmp_path):
    result = run_job(sim / "particles.star", tmp_path / "apply",
                     JobConfig(model_path=str(job.model_path), refine=False), context=QUIET)
    assert not (tmp_path / "apply" / "checkpoint.pt").exists()  # nothing was trained
    assert result.report["training_history"] == [] and result.report["defocus"]["method"] == "latent_radius_quantiles"
    assert "rlnCanonAlignmentScore" not in read_star(result.particles_star).particles.columns


def test_per_class_frames_follow_the_input_classes(sim, tmp_path):
    # As after a Class2D with two classes whose frames differ: each class's output is in its own input frame.
    star = read_star(sim / "particles.star")
    truth = read_ground_truth(sim)
    classes = np.where(np.arange(len(star)) % 2 == 0, 1, 2)
    offsets = np.where(classes == 1, 30.0, -70.0)
    given = (truth["rlnAnglePsi"].to_numpy() + offsets + 180) % 360 - 180
    path = write_star(star.with_columns({"rlnClassNumber": classes, "rlnAnglePsi": given}), tmp_path / "classes.star")
    result = run_job(path, tmp_path / "per_class", JobConfig(epochs=1, train_particles=200, per_class=True),
                     context=QUIET)
    out = read_star(result.particles_star).particles["rlnAnglePsi"].to_numpy()
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    diff = (out - given + 180) % 360 - 180
    assert np.sqrt(np.mean(diff[~junk] ** 2)) < 4.0
    assert set(result.report["classes"]) == {"1", "2"}


def test_run_command(sim, tmp_path):
    res = CliRunner().invoke(cli, ["run", "--i", str(sim / "particles.star"), "--o", str(tmp_path / "cli"),
                                   "--epochs", "1", "--train-particles", "100", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Outliers" in res.output and (tmp_path / "cli" / "particles_selected.star").exists()


def test_too_few_particles_is_a_clear_error(sim, tmp_path):
    star = read_star(sim / "particles.star")
    path = write_star(star.subset(np.arange(5)), tmp_path / "five.star")
    res = CliRunner().invoke(cli, ["run", "--i", str(path), "--o", str(tmp_path / "few")])
    assert res.exit_code == 2 and "at least 10" in res.stderr
    assert not (tmp_path / "few" / "particles.star").exists()


def test_few_particles_without_refinement_still_score_outliers(sim, tmp_path):
    # 30 particles and a 16-D latent: the detectors get as many components as the particles support.
    star = read_star(sim / "particles.star")
    path = write_star(star.subset(np.arange(30)), tmp_path / "thirty.star")
    result = run_job(path, tmp_path / "small", JobConfig(epochs=1, refine=False), context=QUIET)
    z = read_star(result.particles_star).particles["rlnParticleSelectZScore"].to_numpy()
    assert len(z) == 30 and np.all(np.isfinite(z))


def test_particles_without_ctf(tmp_path):
    # E.g. negative stain: no rlnDefocusU/V. Angles and outliers still come; no defocus or weight columns.
    simulate_dataset(SimulationConfig(n_particles=120, box=32, pixel_size=5.0, snr=1.0, ctf=False, junk_fraction=0.1,
                                      phantom_seed=7, seed=4), tmp_path / "sim")
    result = run_job(tmp_path / "sim" / "particles.star", tmp_path / "job", JobConfig(epochs=1),
                     context=QUIET)
    out = read_star(result.particles_star).particles
    assert "rlnCanonDefocus" not in out.columns and "rlnParticleFigureOfMerit" not in out.columns
    truth = read_ground_truth(tmp_path / "sim")
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    assert align_angles(out["rlnAnglePsi"].to_numpy()[~junk], truth["rlnAnglePsi"].to_numpy()[~junk]).rmse < 3.0
    assert result.report["defocus"]["method"] is None


def test_noise_free_particles_coarser_than_the_pixels(tmp_path):
    # Noise-free images whose signal ends well below Nyquist (a map coarser than the pixels, paper B's
    # protocol): the empty Fourier shells must not swamp the refinement.
    simulate_dataset(SimulationConfig(n_particles=100, box=48, pixel_size=3.0, snr=float("inf"), junk_fraction=0.0,
                                      phantom_seed=7, seed=6), tmp_path / "sim")
    star = read_star(tmp_path / "sim" / "particles.star")
    with mrcfile.open(tmp_path / "sim" / "particles.mrcs") as m:
        images = m.data.copy()
    padded = fourier_resample(fourier_resample(images, 24), 48)  # nothing beyond half the old Nyquist
    write_stack(tmp_path / "sim" / "particles.mrcs", padded, 3.0)
    result = run_job(star.path, tmp_path / "job", JobConfig(epochs=1), context=QUIET)
    out = read_star(result.particles_star).particles
    truth = read_ground_truth(tmp_path / "sim")
    assert align_angles(out["rlnAnglePsi"].to_numpy(), truth["rlnAnglePsi"].to_numpy()).rmse < 2.0
