"""evaluation.evaluate_job: a job's output joined to its truth or RELION reference, every metric as expected."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from relion_canon.analysis.evaluation import angle_metrics, evaluate
from relion_canon.geometry import wrap_deg
from relion_canon.errors import InputError
from relion_canon.io.star import read_star, write_star
from tests.analysis.evaluation.helpers import fake_job, relion_reference


def test_evaluate_against_ground_truth(sim, truth_table, tmp_path):
    spoilt = int(np.flatnonzero(truth_table["rlnCanonIsJunk"].to_numpy() == 0)[3])
    job = fake_job(sim, tmp_path / "job", psi_offset=40.0, sign=-1, psi_noise=2.0, rotation=25.0, spoil_row=spoilt)
    ev = evaluate(job, sim)
    good = int((truth_table["rlnCanonIsJunk"] == 0).sum())
    assert ev.n_particles == 100 and ev.n_evaluated == good and "non-junk" in ev.subset

    a = ev.angle
    assert a.sign == -1 and a.offset_deg == pytest.approx(40.0, abs=1.0)
    assert 1.4 < a.rmse_deg < 2.6 and a.n == good
    assert a.weighted_rmse_deg is not None

    d = ev.defocus
    assert d.n == good and d.mean_error_um == pytest.approx(0.03, abs=0.05)
    assert d.rmse_um == pytest.approx(np.sqrt(0.03**2 + 0.02**2), abs=0.01)

    o = ev.outliers
    assert o.auc == {"relion_canon (iforest)": 1.0}
    assert o.precision == 1.0 and o.recall == 1.0 and o.threshold == 2.0
    assert set(o.recall_by_kind) == set(truth_table.loc[truth_table["rlnCanonIsJunk"] == 1, "rlnCanonJunkKind"])

    c = ev.canonical
    assert c.n == good and not c.mirrored
    assert abs(c.rotation_deg - 25.0) < 0.3
    # Every good canonical image but the spoilt one matches its truth; the spoilt one is the worst.
    assert c.worst_row == spoilt + 1 and c.worst_mse > 1.0
    assert np.median(c.mse) < 0.01
    assert c.examples["truth"].shape == c.examples["canonical"].shape == c.examples["input"].shape
    assert c.worst_rows[0] == spoilt + 1


def test_evaluate_mirrored_frame_and_accepts_ground_truth_star(sim, tmp_path):
    job = fake_job(sim, tmp_path / "job", rotation=-70.0, mirrored=True, sign=1, psi_offset=-15.0)
    ev = evaluate(job / "particles.star", sim / "ground_truth.star")
    assert ev.canonical.mirrored and abs(wrap_deg(ev.canonical.rotation_deg + 70.0)) < 0.3
    assert ev.canonical.mean_mse < 0.01
    assert ev.angle.sign == 1 and ev.angle.offset_deg == pytest.approx(-15.0, abs=1.0)


def test_evaluate_against_relion_reference(sim, truth_table, tmp_path):
    job = fake_job(sim, tmp_path / "job", psi_offset=10.0, sign=1, psi_noise=3.0, canonical=False)
    ref = relion_reference(sim, tmp_path / "run_it020_data.star", psi_noise=1.0)
    ev = evaluate(job, relion=ref)
    assert ev.reference.startswith("RELION") and ev.n_evaluated == 100 and ev.subset == "all particles"
    assert ev.canonical is None
    # The reference's rows are shuffled: the evaluation must pair each particle with its own reference angle.
    job_table = read_star(job / "particles.star").particles
    merged = job_table[["rlnImageName", "rlnAnglePsi"]].merge(
        read_star(ref).particles[["rlnImageName", "rlnAnglePsi"]], on="rlnImageName", suffixes=("", "_ref"))
    expected = angle_metrics(merged["rlnAnglePsi"].to_numpy(), merged["rlnAnglePsi_ref"].to_numpy())
    assert ev.angle.rmse_deg == pytest.approx(expected.rmse_deg)
    assert ev.angle.offset_deg == pytest.approx(expected.offset_deg)
    # Junk psi are random in the fake job and the reference cannot mark them: all particles count.
    good = truth_table["rlnCanonIsJunk"].to_numpy() == 0
    assert ev.angle.rmse_deg > 10 and ev.angle.sign == 1
    assert "CTFFIND" in ev.defocus.reference
    assert ev.outliers.label_source.startswith("RELION rlnParticleSelectZScore > 2")
    assert ev.outliers.n_positive == int((~good).sum()) and ev.outliers.auc["relion_canon (iforest)"] == 1.0


def test_relion_is_scored_as_a_peer_with_truth(sim, tmp_path):
    job = fake_job(sim, tmp_path / "job", psi_noise=4.0, canonical=False)
    ref = relion_reference(sim, tmp_path / "ref.star", psi_noise=1.0)
    ev = evaluate(job, sim, ref)
    (name, peer), = ev.peer.items()
    assert "ref.star" in name
    assert peer.n == ev.angle.n and peer.sign == 1 and abs(peer.offset_deg) < 0.6
    assert 0.7 < peer.rmse_deg < 1.3 and 3.0 < ev.angle.rmse_deg < 5.0
    assert ev.outliers.auc[name] == 1.0
    table = ev.to_markdown()
    assert name in table.splitlines()[4]  # the header row has a column for the peer
    assert "no canonical metric" in " ".join(ev.notes)


def test_symmetry_defaults_to_the_jobs_detection(sim, tmp_path):
    # A C2 job: half the particles' angles are off by exactly 180°, which C2 makes indistinguishable.
    job = fake_job(sim, tmp_path / "job", canonical=False, psi_noise=1.0)
    star = read_star(job / "particles.star")
    flipped = star.particles.copy()
    flipped.loc[::2, "rlnAnglePsi"] = wrap_deg(flipped.loc[::2, "rlnAnglePsi"] + 180.0)
    write_star(star.with_particles(flipped), job / "particles.star")
    (job / "report.json").write_text(json.dumps({"symmetry": {"n": 2, "confidence": 0.9}}))
    detected = evaluate(job, sim)
    assert detected.angle.symmetry == 2 and detected.angle.rmse_deg < 1.5
    assert any("detected C2" in n for n in detected.notes)
    forced = evaluate(job, sim, symmetry=1)
    assert forced.angle.symmetry == 1 and forced.angle.rmse_deg > 60
    assert any("although the job detected C2" in n for n in forced.notes)


def test_missing_columns_leave_metrics_out(sim, tmp_path):
    job = fake_job(sim, tmp_path / "job", canonical=False)
    star = read_star(job / "particles.star")
    write_star(star.with_particles(star.particles.drop(columns=["rlnCanonDefocus", "rlnParticleFigureOfMerit"])),
               job / "particles.star")
    ev = evaluate(job, sim)
    assert ev.defocus is None and ev.canonical is None and ev.angle.weighted_rmse_deg is None
    assert any("rlnCanonDefocus" in n for n in ev.notes)


def test_bad_inputs_raise_input_error(sim, tmp_path):
    job = fake_job(sim, tmp_path / "job", canonical=False)
    with pytest.raises(InputError, match="nothing to evaluate against"):
        evaluate(job)
    with pytest.raises(InputError, match="no particles.star"):
        evaluate(tmp_path, sim)
    with pytest.raises(InputError, match="STAR file not found"):
        evaluate(job, tmp_path / "missing")
    with pytest.raises(InputError, match="not a simulation ground truth"):
        evaluate(job, sim / "particles.star")
    with pytest.raises(InputError, match="not a relion_canon output"):
        evaluate(sim / "particles.star", sim)
    # A job with more particles than the truth, under other names: no safe join.
    star = read_star(job / "particles.star")
    extra = pd.concat([star.particles, star.particles.iloc[:3]], ignore_index=True)
    extra["rlnImageName"] = [f"{i + 1}@x.mrcs" for i in range(len(extra))]
    write_star(star.with_particles(extra), job / "particles.star")
    with pytest.raises(InputError) as err:
        evaluate(job, sim)
    assert err.value.file == str(job / "particles.star") and err.value.row == 1


def test_canonical_frame_is_fitted_per_job_class(sim, tmp_path):
    """Each class's frame is its own: images of two classes turned by different angles (one mirrored) match the
    truth once a frame is fitted per rlnClassNumber, and do not under one frame for all."""
    from relion_canon.geometry import rotate_images
    from relion_canon.io.mrc import write_stack
    from relion_canon.io.source import ParticleSource
    from tests.analysis.evaluation.helpers import mirror

    job = fake_job(sim, tmp_path / "job", rotation=25.0)
    star = read_star(job / "particles.star")
    n = len(star)
    second = np.arange(n) % 2 == 1
    clean = ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(np.arange(n)).astype(np.float64)
    images = rotate_images(clean, np.where(second, -100.0, 25.0), order=3)
    images[second] = mirror(images[second])
    write_stack(job / "canonical.mrcs", images.astype(np.float32), 2.5)

    write_star(star.with_columns({"rlnClassNumber": np.where(second, 7, 2)}), job / "particles.star")
    per_class = evaluate(job, sim).canonical
    assert per_class.frames == 2 and per_class.mean_mse < 0.01
    assert per_class.examples["canonical"].shape == per_class.examples["truth"].shape

    write_star(star, job / "particles.star")  # no classes: one frame for all
    one = evaluate(job, sim).canonical
    assert one.frames == 1 and one.mean_mse > 10 * per_class.mean_mse + 0.1
