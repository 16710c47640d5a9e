"""evaluation: the metrics of benchmarks.md recover known errors, and a job's output is joined to its truth.

Synthetic "job outputs" are built from a small simulated set with known mistakes (a global psi offset and a
flipped sign plus noise, a defocus bias, outlier scores that separate junk perfectly, canonical images that
are the clean truth turned by a global angle and possibly mirrored), so every expected number follows from
how the output was made. ``simulated_set`` and ``fake_job`` are shared with the report and CLI tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_canon.analysis.evaluation import (
    NORMALISATION,
    angle_metrics,
    canonical_errors,
    defocus_metrics,
    evaluate,
    fit_canonical_frame,
    match_rows,
    normalise_in_mask,
    outlier_metrics,
    to_truth_frame,
)
from relion_canon.analysis.metrics import wrap_degrees
from relion_canon.errors import InputError
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import write_stack
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star, write_star
from relion_canon.simulate import SimulationConfig, read_ground_truth, rotate_images, simulate_dataset


# --- shared builders ------------------------------------------------------------------------------------------
def simulated_set(folder: Path, n: int = 100, seed: int = 3) -> Path:
    """~100 particles at 32 px, 20 % junk of every kind, small shifts, defocus 0.5-2.5 µm."""
    simulate_dataset(SimulationConfig(n_particles=n, box=32, junk_fraction=0.2, shift_sigma=1.0, seed=seed), folder)
    return folder


def mirror(images: np.ndarray) -> np.ndarray:
    """Left-right mirror about column box//2 (written out here, independently of the module under test)."""
    box = images.shape[-1]
    out = np.zeros_like(images)
    c = box // 2
    for x in range(box):
        src = 2 * c - x
        if 0 <= src < box:
            out[..., x] = images[..., src]
    return out


def fake_job(
    sim: Path,
    out: Path,
    *,
    psi_offset: float = 40.0,
    sign: int = -1,
    psi_noise: float = 2.0,
    defocus_bias: float = 300.0,
    defocus_noise: float = 200.0,
    rotation: float = 25.0,
    mirrored: bool = False,
    canonical: bool = True,
    spoil_row: int | None = None,
    seed: int = 0,
) -> Path:
    """A job folder for the simulated set ``sim`` with known errors: sign·psi = truth + offset + N(0, noise);
    defocus = truth + bias + N(0, noise) Å; Z-score 5 ± 1 for junk and 0 ± 1 otherwise (flags at 2); canonical
    images = clean truth turned by ``rotation`` (mirrored after turning if ``mirrored``), affinely rescaled;
    ``spoil_row`` (0-based) gets a noise image as its canonical."""
    rng = np.random.default_rng(seed)
    star = read_star(sim / "particles.star")
    truth = read_ground_truth(sim)
    n = len(star)
    junk = truth["rlnCanonIsJunk"].to_numpy(bool)
    psi = sign * (truth["rlnAnglePsi"].to_numpy() + psi_offset + rng.normal(0, psi_noise, n))
    psi[junk] = rng.uniform(-180, 180, junk.sum())
    true_defocus = (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy() / 2
    defocus = true_defocus + defocus_bias + rng.normal(0, defocus_noise, n)
    z = np.where(junk, 5.0, 0.0) + rng.uniform(-1, 1, n)
    columns = {
        "rlnAnglePsi": wrap_degrees(psi),
        "rlnAnglePsiPrior": wrap_degrees(psi),
        "rlnCanonDefocus": defocus,
        "rlnParticleFigureOfMerit": np.exp(defocus / 1e4) - 1,
        "rlnParticleSelectZScore": z,
        "rlnCanonIsOutlier": (z > 2).astype(int),
    }
    out.mkdir(parents=True, exist_ok=True)
    if canonical:
        clean = ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(np.arange(n)).astype(np.float64)
        images = rotate_images(clean, np.full(n, rotation), order=3)
        if mirrored:
            images = mirror(images)
        images = 3.0 * images + 0.5
        if spoil_row is not None:
            images[spoil_row] = rng.normal(0, 1, images.shape[1:])
        stack = out / "canonical.mrcs"
        write_stack(stack, images.astype(np.float32), 2.5)
        columns["rlnCanonCanonicalImage"] = [format_image_name(i, str(stack)) for i in range(n)]
    write_star(star.with_columns(columns), out / "particles.star")
    (out / "report.json").write_text(json.dumps({"outliers": {"method": "iforest", "threshold": 2.0}}))
    return out


def relion_reference(sim: Path, path: Path, *, psi_noise: float = 1.0, shuffle: bool = True, seed: int = 1) -> Path:
    """A Class2D-like STAR for the set: psi = truth + N(0, noise), Z-score 3 for junk and 0 otherwise,
    rows shuffled (RELION writes particles in its own order)."""
    rng = np.random.default_rng(seed)
    star = read_star(sim / "particles.star")
    truth = read_ground_truth(sim)
    junk = truth["rlnCanonIsJunk"].to_numpy(int)
    ref = star.with_columns({
        "rlnAnglePsi": wrap_degrees(truth["rlnAnglePsi"].to_numpy() + rng.normal(0, psi_noise, len(star))),
        "rlnClassNumber": np.ones(len(star), int),
        "rlnParticleSelectZScore": 3.0 * junk + rng.uniform(-0.5, 0.5, len(star)),
    })
    if shuffle:
        ref = ref.with_particles(ref.particles.iloc[rng.permutation(len(star))].reset_index(drop=True))
    write_star(ref, path)
    return path


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    return simulated_set(tmp_path_factory.mktemp("sim") / "set")


@pytest.fixture(scope="module")
def truth_table(sim) -> pd.DataFrame:
    return read_ground_truth(sim)


# --- metrics on arrays ----------------------------------------------------------------------------------------
def test_angle_metrics_remove_offset_and_sign():
    rng = np.random.default_rng(0)
    true = rng.uniform(-180, 180, 4000)
    noise = rng.normal(0, 3.0, true.size)
    pred = wrap_degrees(-(true + 70.0 + noise))
    m = angle_metrics(pred, true)
    assert m.sign == -1
    assert m.offset_deg == pytest.approx(70.0, abs=0.3)
    assert m.rmse_deg == pytest.approx(np.sqrt(np.mean(noise**2)), rel=0.02)
    assert m.median_deg == pytest.approx(np.median(np.abs(noise)), rel=0.05)
    # In the reference's frame the predictions sit on the truth, up to the noise.
    assert np.abs(wrap_degrees(m.aligned_deg - true)).max() < 6 * 3.0


def test_weighted_rmse_favours_confident_particles():
    rng = np.random.default_rng(1)
    true = rng.uniform(-180, 180, 2000)
    bad = np.arange(true.size) % 2 == 0
    pred = true + np.where(bad, rng.normal(0, 20, true.size), rng.normal(0, 1, true.size))
    weights = np.where(bad, 0.1, 2.0)
    m = angle_metrics(pred, true, weights)
    expected = np.sqrt(np.sum(weights * m.errors_deg**2) / weights.sum())
    assert m.weighted_rmse_deg == pytest.approx(expected)
    assert m.weighted_rmse_deg < 0.5 * m.rmse_deg
    # Weights are w = exp(def̂) − 1: a negative one (def̂ < 0) must not count against the others.
    assert angle_metrics(pred, true, np.where(bad, -1.0, 2.0)).weighted_rmse_deg < 2.0
    assert angle_metrics(pred, true, np.zeros_like(pred)).weighted_rmse_deg is None


def test_symmetry_compares_modulo_360_over_n():
    rng = np.random.default_rng(2)
    true = rng.uniform(-180, 180, 3000)
    pred = wrap_degrees(true + 120.0 * rng.integers(0, 3, true.size) + rng.normal(0, 1.0, true.size))
    assert angle_metrics(pred, true).rmse_deg > 40
    c3 = angle_metrics(pred, true, symmetry=3)
    assert c3.rmse_deg < 1.2 and c3.symmetry == 3
    with pytest.raises(ValueError):
        angle_metrics(pred, true, symmetry=0)


def test_defocus_metrics_in_micrometres():
    true = np.linspace(5000, 25000, 50)
    m = defocus_metrics(true + 1000.0, true, "truth")
    assert m.rmse_um == pytest.approx(0.1) and m.mean_error_um == pytest.approx(0.1)
    assert m.true_um.max() == pytest.approx(2.5)


def test_outlier_metrics_auc_precision_recall():
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 1], bool)
    kinds = np.array(["none"] * 4 + ["noise", "aggregate", "none", "noise"])
    perfect = labels * 3.0 + np.linspace(0, 1, 8)
    flags = np.array([0, 0, 0, 1, 1, 0, 0, 1], bool)
    m = outlier_metrics(labels, {"ours": perfect, "reversed": -perfect}, "truth", flags, 2.0, "iforest", kinds)
    assert m.auc == {"ours": 1.0, "reversed": 0.0}
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.recall_by_kind == {"aggregate": 0.0, "noise": 1.0}
    assert m.n_positive == 3 and m.n_flagged == 3
    one_class = outlier_metrics(np.zeros(5, bool), {"ours": np.arange(5.0)}, "truth", np.zeros(5, bool))
    assert one_class.auc["ours"] is None and one_class.precision is None and one_class.recall is None


# --- canonical images -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_views(sim, truth_table) -> np.ndarray:
    good = np.flatnonzero(truth_table["rlnCanonIsJunk"].to_numpy() == 0)
    return ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(good[:12]).astype(np.float64)


@pytest.mark.parametrize("rotation, mirrored", [(25.0, False), (-137.5, False), (63.0, True), (180.0, True)])
def test_canonical_frame_recovered(clean_views, rotation, mirrored):
    job = rotate_images(clean_views, np.full(len(clean_views), rotation), order=3)
    if mirrored:
        job = mirror(job)
    job = 2.0 * job - 7.0  # a job's intensities have their own scale and offset
    found, is_mirrored = fit_canonical_frame(job, clean_views)
    assert is_mirrored == mirrored
    assert abs(wrap_degrees(found - rotation)) < 0.3
    mse = canonical_errors(job, clean_views, found, is_mirrored)
    assert mse.max() < 0.01
    # Without the alignment the same images are far off: the alignment, not the metric, makes them agree.
    assert canonical_errors(job, clean_views, 0.0, False).mean() > 0.1
    back = to_truth_frame(job, found, is_mirrored)
    y, x = np.mgrid[:32, :32] - 16
    disk = np.hypot(x, y) < 14  # the corners came from outside the box
    assert np.corrcoef(back[0][disk], clean_views[0][disk])[0, 1] > 0.995


def test_canonical_mse_scale(clean_views):
    # Normalised images: identical → 0; uncorrelated → about 2 (= 2·(1 − r)); sign-inverted → 4.
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, clean_views.shape)
    assert canonical_errors(clean_views, clean_views, 0.0, False).max() < 1e-12
    assert canonical_errors(noise, clean_views, 0.0, False).mean() == pytest.approx(2.0, abs=0.2)
    assert canonical_errors(-clean_views, clean_views, 0.0, False).mean() == pytest.approx(4.0, abs=1e-9)
    norm = normalise_in_mask(clean_views)
    inside = norm[:, 16, 4:28]
    assert np.all(norm[:, 0, 0] == 0) and np.abs(inside).sum() > 0
    assert "unit variance" in NORMALISATION


# --- whole evaluation -------------------------------------------------------------------------------------------
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
    assert ev.canonical.mirrored and abs(wrap_degrees(ev.canonical.rotation_deg + 70.0)) < 0.3
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
    flipped.loc[::2, "rlnAnglePsi"] = wrap_degrees(flipped.loc[::2, "rlnAnglePsi"] + 180.0)
    write_star(star.with_particles(flipped), job / "particles.star")
    (job / "report.json").write_text(json.dumps({"symmetry": {"n": 2, "confidence": 0.9}}))
    detected = evaluate(job, sim)
    assert detected.angle.symmetry == 2 and detected.angle.rmse_deg < 1.5
    assert any("detected C2" in n for n in detected.notes)
    forced = evaluate(job, sim, symmetry=1)
    assert forced.angle.symmetry == 1 and forced.angle.rmse_deg > 60
    assert any("although the job detected C2" in n for n in forced.notes)


def test_report_structures_are_json_and_markdown(sim, tmp_path):
    ev = evaluate(fake_job(sim, tmp_path / "job"), sim)
    d = json.loads(ev.to_json())
    assert d["angle"]["rmse_deg"] == pytest.approx(ev.angle.rmse_deg)
    assert "errors_deg" not in d["angle"] and "mse" not in d["canonical"] and "scores" not in d["outliers"]
    assert d["canonical"]["normalisation"] == NORMALISATION
    worst = {"row": ev.canonical.worst_row, "mse": pytest.approx(ev.canonical.worst_mse)}
    assert d["canonical"]["worst_cases"][0] == worst
    md = ev.to_markdown()
    assert f"{ev.angle.rmse_deg:.4g}" in md and f"{ev.canonical.mean_mse:.4g}" in md
    assert "non-junk" in md and "| metric | relion_canon |" in md


def test_missing_columns_leave_metrics_out(sim, tmp_path):
    job = fake_job(sim, tmp_path / "job", canonical=False)
    star = read_star(job / "particles.star")
    write_star(star.with_particles(star.particles.drop(columns=["rlnCanonDefocus", "rlnParticleFigureOfMerit"])),
               job / "particles.star")
    ev = evaluate(job, sim)
    assert ev.defocus is None and ev.canonical is None and ev.angle.weighted_rmse_deg is None
    assert any("rlnCanonDefocus" in n for n in ev.notes)


# --- joining and bad input ------------------------------------------------------------------------------------------
def test_join_on_names_in_any_order_and_folder(sim, tmp_path):
    job = read_star(fake_job(sim, tmp_path / "job", canonical=False) / "particles.star")
    truth = read_star(sim / "ground_truth.star")
    shuffled = truth.with_particles(truth.particles.iloc[::-1].reset_index(drop=True))
    assert np.array_equal(match_rows(job, shuffled), np.arange(len(job))[::-1])
    # The same stack reached through another folder spelling (a job run from elsewhere) still joins.
    moved = truth.particles.copy()
    moved["rlnImageName"] = [n.split("@")[0] + "@/elsewhere/particles.mrcs" for n in moved["rlnImageName"]]
    notes: list[str] = []
    assert np.array_equal(match_rows(job, truth.with_particles(moved), notes), np.arange(len(job)))
    assert "stack file name" in notes[0]
    # A subset of the reference (e.g. particles_selected.star evaluated against the full truth) joins too.
    subset = job.subset(np.arange(10, 30))
    assert np.array_equal(match_rows(subset, truth), np.arange(10, 30))


def test_unmatched_names_fall_back_to_row_order_only_with_equal_counts(sim, tmp_path):
    job = read_star(fake_job(sim, tmp_path / "job", canonical=False) / "particles.star")
    truth = read_star(sim / "ground_truth.star")
    renamed = truth.particles.copy()
    renamed["rlnImageName"] = [f"{i + 1}@other.mrcs" for i in range(len(renamed))]
    notes: list[str] = []
    assert np.array_equal(match_rows(job, truth.with_particles(renamed), notes), np.arange(len(job)))
    assert "row order" in notes[0]
    with pytest.raises(InputError) as err:
        match_rows(job, truth.with_particles(renamed.iloc[:50]))
    assert err.value.row == 1 and "100 particles here, 50 there" in str(err.value)


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
