"""report: a job's figures and the evaluation's files land complete on disk, also when parts are missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from relion_canon.analysis.estimate import Estimates
from relion_canon.analysis.evaluation import evaluate
from relion_canon.analysis.report import (
    EVALUATION_JSON,
    EVALUATION_MD,
    EVALUATION_PDF,
    JOB_FIGURES,
    LOGFILE_PDF,
    job_figures,
    write_evaluation,
    write_figures,
)
from relion_canon.logs import log_to
from tests.analysis.evaluation.helpers import fake_job, relion_reference, simulated_set


def _pages(pdf: Path) -> int:
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))


def _estimates(n: int = 60, *, defocus: bool = True, latent_dim: int = 4, extras: bool = True) -> Estimates:
    rng = np.random.default_rng(0)
    psi = rng.uniform(-180, 180, n)
    dz = rng.uniform(5000, 25000, n)
    z = rng.normal(0, 1, n)
    columns = {
        "rlnAnglePsi": psi,
        "rlnAnglePsiPrior": psi,
        "rlnCanonDefocus": dz + rng.normal(0, 500, n),
        "rlnParticleFigureOfMerit": np.exp(dz / 1e4) - 1,
        "rlnParticleSelectZScore": z,
        "rlnCanonIsOutlier": (z > 2).astype(int),
    }
    t = np.deg2rad(psi)
    latent = np.stack([dz * np.cos(t), dz * np.sin(t), dz, rng.normal(size=n)][:latent_dim], axis=1) / 1e4
    k = 4 if extras else 0
    return Estimates(
        columns=columns,
        report={"outliers": {"method": "ensemble", "threshold": 2.0},
                # A classified job: the gallery needs each class's facts.
                "classes": {"1": {"n_particles": n - 10, "fraction": (n - 10) / n, "resolution_A": 12.0,
                                  "is_junk": False},
                            "2": {"n_particles": 10, "fraction": 10 / n, "resolution_A": 30.0, "is_junk": True}}
                if extras else {}},
        latent=latent,
        psi_model=psi,
        defocus_input=dz if defocus else None,
        outlier_scores={"iforest": z, "lof": rng.normal(0, 1, n)} if extras else {},
        example_index=np.arange(k),
        example_inputs=rng.normal(size=(k, 16, 16)),
        example_canonical=rng.normal(size=(k, 16, 16)),
        class_averages={1: rng.normal(size=(16, 16)), 2: rng.normal(size=(16, 16))} if extras else {},
    )


def _with_reference(est: Estimates) -> Estimates:
    """A job given a reference map: class 1 matched (its particles with a prior but two flagged as junk),
    class 3 ambiguous, class 2 junk and not matched."""
    n = len(est.psi_model)
    number = np.where(np.arange(n) < n - 10, 1, 2)
    number[:5] = 3
    tilt_prior = np.where(number == 1, 40.0, 999.0)
    tilt_prior[5:7] = 999.0
    rng = np.random.default_rng(1)
    est.columns |= {"rlnClassNumber": number, "rlnAngleTiltPrior": tilt_prior}
    est.report["classes"] = {"1": {"n_particles": int((number == 1).sum())}, "2": {"n_particles": 10},
                             "3": {"n_particles": 5}}
    est.report["orientation"] = {"symmetry": "C2", "classes": {
        "1": {"rot_deg": 30.0, "tilt_deg": 40.0, "psi_offset_deg": 12.0, "shift_px": [0.5, -1.0], "peak": 0.91,
              "margin": 0.2, "frc_resolution_A": 18.0, "ambiguous": False},
        "2": {"junk": True},
        "3": {"rot_deg": -150.0, "tilt_deg": 100.0, "psi_offset_deg": -3.0, "shift_px": [0.0, 0.0], "peak": 0.8,
              "margin": 0.01, "frc_resolution_A": 25.0, "ambiguous": True,
              "reason": "the direction (rot 30°, tilt 140°) matches almost as well (0.790 vs 0.800)"}}}
    est.matched_projections = {c: (rng.normal(size=(16, 16)), rng.normal(size=(16, 16))) for c in (1, 3)}
    return est


HISTORY = [{"epoch": e, "model/loss": 1.0 / e, "model/rec": 0.5 / e, "critic/wd": -0.1 * e} for e in (1, 2, 3)]


def test_write_figures_full_job(tmp_path):
    logs: list[str] = []
    with log_to(logs.append):
        paths = write_figures(tmp_path, _with_reference(_estimates()), HISTORY)
    names = [p.name for p in paths]
    assert names == [f"{stem}.png" for stem in JOB_FIGURES] + [LOGFILE_PDF]
    for p in paths[:-1]:
        assert p.read_bytes().startswith(b"\x89PNG")
    assert _pages(tmp_path / LOGFILE_PDF) == len(paths) - 1
    assert logs and LOGFILE_PDF in logs[0]
    # Written through temporary names: nothing but the outputs is left in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_write_figures_with_parts_missing(tmp_path):
    # A logfile from an earlier run is replaced whole, and that run's figures this one does not draw go.
    (tmp_path / LOGFILE_PDF).write_bytes(b"old logfile")
    (tmp_path / "training_curves.png").write_bytes(b"old figure")
    (tmp_path / "user_notes.png").write_bytes(b"not ours")
    # An applied model (no history), a STAR without defocus, a 1-D latent, few particles, no extras.
    est = _estimates(10, defocus=False, latent_dim=1, extras=False)
    paths = write_figures(tmp_path, est, [])
    assert [p.name for p in paths] == ["psi_histogram.png", "outlier_scores.png", LOGFILE_PDF]
    assert _pages(tmp_path / LOGFILE_PDF) == 2
    assert not (tmp_path / "training_curves.png").exists() and (tmp_path / "user_notes.png").exists()
    # Without the STAR's defocus the latent is coloured by the estimate.
    figs = dict(job_figures(_estimates(12, defocus=False), []))
    assert "defocus_vs_star" not in figs
    assert any("estimated defocus" in (ax.get_title() or "") for ax in figs["latent_pca"].axes)
    # The threshold belongs to the STAR's score, drawn first; a detector identical to it is not repeated.
    legend = [t.get_text() for t in figs["outlier_scores"].axes[0].get_legend().get_texts()]
    assert legend[:2] == ["rlnParticleSelectZScore, ensemble (decides)", "lof"]
    # The counts are of the written flag: by the deciding score, and only by a junk class (none here).
    z = _estimates(12, defocus=False).columns["rlnParticleSelectZScore"]
    assert legend[2] == (f"threshold 2\n{int((z > 2).sum())} of {len(z)} flagged:\n{int((z > 2).sum())} with the "
                         "deciding score above it,\n0 only for being in a junk class")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sim = simulated_set(root / "sim", n=60, seed=5)
    job = fake_job(sim, root / "job", mirrored=True)
    return evaluate(job, sim, relion_reference(sim, root / "ref.star"))


def test_write_evaluation_files(evaluation, tmp_path):
    out = tmp_path / "eval"
    paths = write_evaluation(out, evaluation)
    names = [p.name for p in paths]
    assert names[:2] == [EVALUATION_MD, EVALUATION_JSON] and names[-1] == EVALUATION_PDF
    assert (out / EVALUATION_MD).read_text() == evaluation.to_markdown()
    assert json.loads((out / EVALUATION_JSON).read_text()) == json.loads(evaluation.to_json())
    pngs = [n for n in names if n.endswith(".png")]
    assert {"angle_vs_reference.png", "peer1_angle_vs_reference.png", "defocus_vs_reference.png", "roc.png",
            "canonical_examples.png", "canonical_worst.png"} <= set(pngs)
    assert _pages(out / EVALUATION_PDF) == len(pngs)


@pytest.mark.parametrize("n_images", [1, 3])
def test_worst_canonical_page_shows_each_shared_image_once(tmp_path, n_images):
    """With refinement, --write-canonical names each particle's class average: many particles share one image.
    The page of worst canonical images shows each distinct image once, and is left out (the notes say why) when
    every particle has the same one."""
    from relion_canon.analysis.report import evaluation_figures
    from relion_canon.io.star import read_star, write_star

    sim = simulated_set(tmp_path / "sim", n=40, seed=5)
    job = fake_job(sim, tmp_path / "job")
    star = read_star(job / "particles.star")
    names = star.particles["rlnCanonCanonicalImage"].astype(str)
    shared = [names.iloc[i % n_images] for i in range(len(names))]  # "class averages": n_images for all rows
    write_star(star.with_columns({"rlnCanonCanonicalImage": np.array(shared, dtype=object)}), job / "particles.star")
    ev = evaluate(job, sim, None)
    figs = dict(evaluation_figures(ev))
    notes = " ".join(ev.notes)
    if n_images == 1:
        assert "canonical_worst" not in figs and "canonical_examples" in figs
        assert "same image (one class average): no page of worst canonical images" in notes
    else:
        titles = [t.get_text() for t in figs["canonical_worst"].axes[0].texts if t.get_text().startswith("row ")]
        assert len(titles) == n_images  # the worst particle of each distinct image, one column each
        assert re.search(rf"names {n_images} distinct images for \d+ particles", notes)


def test_reference_pages_show_each_match_and_the_directions(tmp_path):
    """With a reference map the logfile gets two pages: each matched class beside its projection with its
    direction and confidence (the ambiguous one red, with its reason), and the directions weighted by the
    particles that got a prior; without one, neither page."""
    est = _with_reference(_estimates())
    figs = dict(job_figures(est, []))
    matches = figs["orientation_matches"]
    titles = [ax.get_title() for ax in matches.axes]
    assert titles[0].splitlines() == ["class 1, 45 particles", "rot 30.0°, tilt 40.0°",
                                      "in-plane +12.0°, shift (0.5, -1.0) px", "peak 0.910, margin 0.200, FRC 18 Å"]
    assert titles[1].startswith("class 3, 5 particles: AMBIGUOUS, no prior") and "matches almost" in titles[1]
    assert matches.axes[1].title.get_color() == "red" and matches.axes[0].title.get_color() == "black"
    directions = figs["orientation_directions"].axes[0]
    assert "1 classes, 43 particles; C2" in directions.get_title()  # two of class 1's 45 flagged: no prior
    assert [t.get_text() for t in directions.get_legend().get_texts()] == ["ambiguous (no prior)"]
    paths = write_figures(tmp_path, est, [])
    assert _pages(tmp_path / LOGFILE_PDF) == len(paths) - 1
    assert {"orientation_matches.png", "orientation_directions.png"} <= {p.name for p in paths}
    # A later run without a reference redraws neither and leaves neither behind.
    write_figures(tmp_path, _estimates(), [])
    assert not (tmp_path / "orientation_matches.png").exists() and not (tmp_path / "orientation_directions.png").exists()
