"""simulate_dataset: files, determinism, SNR, junk, CTF parameters, conventions, failure behaviour."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from relion_canon.errors import InputError
from relion_canon.io import ParticleSource, read_star
from relion_canon.geometry import canonicalise, rotate_images
from relion_canon.simulate import (
    JUNK_KINDS,
    SimulationConfig,
    read_ground_truth,
    simulate_dataset,
)
from relion_canon.simulate import dataset as dataset_mod

SMALL = SimulationConfig(n_particles=60, box=32, pixel_size=5.0, seed=7)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    """A small set with every junk kind, shifts and astigmatism."""
    out = tmp_path_factory.mktemp("sim") / "set"
    cfg = replace(SMALL, n_particles=200, junk_fraction=0.25, shift_sigma=4.0, astigmatism=600.0)
    simulate_dataset(cfg, out)
    return out


def test_files_and_star_layout(default_set):
    names = {p.name for p in default_set.iterdir()}
    assert names == {
        "particles.star", "particles.mrcs", "ground_truth.star", "ground_truth_clean.mrcs", "simulation.json"
    }
    star = read_star(default_set / "particles.star")
    assert star.generation == "3.1" and star.version == 30001
    optics = star.optics_table
    for label in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                  "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"):
        assert label in optics.columns
    assert optics.rlnImagePixelSize[0] == 5.0 and optics.rlnImageSize[0] == 32
    p = star.particles
    # Outside the working directory (the RELION project), stacks are named by absolute path.
    stack = (default_set / "particles.mrcs").resolve().as_posix()
    assert p.rlnImageName[0] == f"000001@{stack}" and p.rlnImageName.iloc[-1] == f"000200@{stack}"
    assert {"rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"} <= set(p.columns)
    # The particle file must not give away the answers.
    assert not any(c.startswith(("rlnAngle", "rlnOrigin", "rlnCanon")) for c in p.columns)
    with mrcfile.open(default_set / "particles.mrcs", permissive=True) as m:
        assert m.data.shape == (200, 32, 32)
        assert m.voxel_size.x == pytest.approx(5.0)
    # Readable through our own lazy source, relative to the STAR's folder.
    src = ParticleSource.from_star(star)
    assert len(src) == 200 and src.read(np.array([0, 199])).shape == (2, 32, 32)
    info = json.loads((default_set / "simulation.json").read_text())
    assert info["config"]["seed"] == 7 and info["noise_sigma"] == 1.0 and "relion_canon_version" in info


def test_ground_truth_table(default_set):
    gt = read_ground_truth(default_set)
    assert gt.equals(read_ground_truth(default_set / "ground_truth.star"))
    star = read_star(default_set / "particles.star").particles
    assert (gt.rlnImageName == star.rlnImageName).all()
    np.testing.assert_array_equal(gt.rlnDefocusU, star.rlnDefocusU)
    assert gt.rlnCanonCleanImageName[4] == f"000005@{(default_set / 'ground_truth_clean.mrcs').resolve().as_posix()}"
    assert gt.rlnAnglePsi.between(-180, 180, inclusive="left").all()
    assert gt.rlnOriginXAngst.std() == pytest.approx(4.0, rel=0.3)
    with pytest.raises(InputError, match="not a simulation ground truth"):
        read_ground_truth(default_set / "particles.star")


def test_junk_fraction_and_labels(default_set):
    gt = read_ground_truth(default_set)
    assert gt.rlnCanonIsJunk.sum() == 50
    counts = gt.rlnCanonJunkKind.value_counts()
    assert counts["none"] == 150
    assert all(counts[k] == 10 for k in JUNK_KINDS)
    assert ((gt.rlnCanonJunkKind != "none") == (gt.rlnCanonIsJunk == 1)).all()
    # Only particles that show the molecule in its view carry a view id.
    no_view = gt.rlnCanonJunkKind.isin(["noise", "other_molecule", "carbon_edge"])
    assert (gt.rlnCanonViewId[no_view] == -1).all() and (gt.rlnCanonViewId[~no_view] == 0).all()
    clean = mrcfile.read(default_set / "ground_truth_clean.mrcs")
    images = mrcfile.read(default_set / "particles.mrcs")
    noise = np.flatnonzero(gt.rlnCanonJunkKind == "noise")
    assert np.all(clean[noise] == 0)
    # Pure-noise particles are the noise itself: σ = 1 (the normalisation of RELION-extracted particles).
    assert images[noise].std() == pytest.approx(1.0, abs=0.03)
    good = np.flatnonzero(gt.rlnCanonIsJunk == 0)
    assert np.abs(clean[good]).max() > 0


def test_snr_measured_on_output(tmp_path):
    for snr in (0.1, 1.0):
        out = tmp_path / f"snr{snr}"
        result = simulate_dataset(replace(SMALL, n_particles=300, snr=snr, junk_fraction=0.0), out)
        images = mrcfile.read(out / "particles.mrcs").astype(np.float64)
        # Noise is independent with variance 1, so var(image) − 1 estimates var(signal).
        measured = float(np.mean(images.var(axis=(1, 2)) - 1.0))
        assert measured == pytest.approx(snr, rel=0.1)
        assert result.snr_measured == pytest.approx(snr, rel=1e-3)  # fewer good particles than the pilot: exact


def test_noise_free_and_scale(tmp_path):
    out = tmp_path / "clean"
    result = simulate_dataset(replace(SMALL, snr=math.inf, junk_fraction=0.0), out)
    images = mrcfile.read(out / "particles.mrcs").astype(np.float64)
    assert result.noise_sigma == 0.0
    assert images.var(axis=(1, 2)).mean() == pytest.approx(1.0, rel=1e-3)
    info = json.loads((out / "simulation.json").read_text())
    assert info["snr_requested"] == "inf" and info["config"]["snr"] == "inf"


def test_seed_determinism(tmp_path, monkeypatch):
    cfg = replace(SMALL, n_particles=40, junk_fraction=0.3, shift_sigma=3.0)
    # Same project-relative output name in two projects, so even the image names agree.
    for project, config in (("a", cfg), ("b", cfg), ("c", replace(cfg, seed=8))):
        (tmp_path / project).mkdir()
        monkeypatch.chdir(tmp_path / project)
        simulate_dataset(config, Path("set"))
    for name in ("particles.star", "particles.mrcs", "ground_truth.star", "ground_truth_clean.mrcs", "simulation.json"):
        assert (tmp_path / "a/set" / name).read_bytes() == (tmp_path / "b/set" / name).read_bytes(), name
    assert (tmp_path / "a/set/particles.mrcs").read_bytes() != (tmp_path / "c/set/particles.mrcs").read_bytes()


def test_defocus_range_values_and_astigmatism(tmp_path, default_set):
    gt = read_ground_truth(default_set)
    mean = (gt.rlnDefocusU + gt.rlnDefocusV) / 2
    assert mean.between(5000, 25000).all() and mean.std() > 4000  # spread over the default range
    np.testing.assert_allclose(gt.rlnDefocusU - gt.rlnDefocusV, 600.0)
    assert gt.rlnDefocusAngle.between(0, 180).all()

    out = tmp_path / "values"
    simulate_dataset(replace(SMALL, defocus_values=(5000.0, 15000.0, 30000.0), n_particles=30), out)
    counts = read_ground_truth(out).rlnDefocusU.value_counts()
    assert sorted(counts.index) == [5000.0, 15000.0, 30000.0] and set(counts) == {10}

    out = tmp_path / "range"
    simulate_dataset(replace(SMALL, defocus_range=(8000.0, 9000.0)), out)
    assert read_ground_truth(out).rlnDefocusU.between(8000, 9000).all()


def test_psi_convention_and_canonical_images(tmp_path):
    """A particle is its clean canonical image rotated counter-clockwise by psi about box//2
    (scipy.ndimage.rotate's direction) and moved by −origin; canonicalise() undoes both."""
    out = tmp_path / "psi"
    simulate_dataset(replace(SMALL, box=64, pixel_size=2.5, n_particles=12, snr=math.inf, ctf=False,
                             junk_fraction=0.0, shift_sigma=0.0), out)
    gt = read_ground_truth(out)
    images = mrcfile.read(out / "particles.mrcs").astype(np.float64)
    clean = mrcfile.read(out / "ground_truth_clean.mrcs").astype(np.float64)
    np.testing.assert_allclose(clean, clean[:1].repeat(len(clean), 0), atol=1e-5)  # one view: one canonical image
    psi = gt.rlnAnglePsi.to_numpy()
    rotated = rotate_images(clean, psi, order=3)
    assert min(_corr(a, b) for a, b in zip(rotated, images)) > 0.99
    # Direction as in product.md: scipy.ndimage.rotate(img, +psi) (about its own centre, half a pixel off).
    for i in range(len(psi)):
        if 20 < abs(psi[i]) < 160:
            plus = _corr(ndimage.rotate(clean[i], psi[i], reshape=False), images[i])
            minus = _corr(ndimage.rotate(clean[i], -psi[i], reshape=False), images[i])
            assert plus > 0.9 and plus > minus + 0.1

    out = tmp_path / "shifted"
    simulate_dataset(replace(SMALL, box=64, pixel_size=2.5, n_particles=8, snr=math.inf, ctf=False,
                             junk_fraction=0.0, shift_sigma=8.0), out)
    gt = read_ground_truth(out)
    images = mrcfile.read(out / "particles.mrcs").astype(np.float64)
    clean = mrcfile.read(out / "ground_truth_clean.mrcs").astype(np.float64)
    origin_px = gt[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.5
    assert np.abs(origin_px).max() > 2
    back = canonicalise(images, gt.rlnAnglePsi.to_numpy(), origin_px, order=3)
    assert min(_corr(a, b) for a, b in zip(back, clean)) > 0.99
    wrong = canonicalise(images, gt.rlnAnglePsi.to_numpy(), -origin_px, order=3)
    assert np.mean([_corr(a, b) for a, b in zip(wrong, clean)]) < 0.9


def test_protein_is_white(tmp_path):
    """Positive density times a CTF that is positive at low frequency: low-pass filtered particles are
    brighter in the middle than at the edge, as in RELION-extracted, contrast-inverted particles."""
    out = tmp_path / "white"
    simulate_dataset(replace(SMALL, box=64, pixel_size=2.5, n_particles=20, snr=math.inf, junk_fraction=0.0), out)
    images = mrcfile.read(out / "particles.mrcs").astype(np.float64)
    low = ndimage.gaussian_filter(images.mean(0), 4)
    assert low[32, 32] > low[4, 4] + 0.1 * low.std()


def test_views(tmp_path):
    out = tmp_path / "k"
    simulate_dataset(replace(SMALL, views=3, junk_fraction=0.0, n_particles=30), out)
    gt = read_ground_truth(out)
    pairs = gt.groupby("rlnCanonViewId")[["rlnAngleRot", "rlnAngleTilt"]].nunique()
    assert list(pairs.index) == [0, 1, 2] and (pairs == 1).all().all()
    assert len(gt[["rlnAngleRot", "rlnAngleTilt"]].drop_duplicates()) == 3

    out = tmp_path / "fixed"
    simulate_dataset(replace(SMALL, rot=30.0, tilt=60.0, psi_sigma=10.0, junk_fraction=0.0, n_particles=200), out)
    gt = read_ground_truth(out)
    assert (gt.rlnAngleRot == 30.0).all() and (gt.rlnAngleTilt == 60.0).all()
    assert gt.rlnAnglePsi.std() == pytest.approx(10.0, rel=0.2)

    out = tmp_path / "uniform"
    simulate_dataset(replace(SMALL, views="uniform", junk_fraction=0.0, n_particles=400), out)
    gt = read_ground_truth(out)
    # Uniform on the sphere: cos(tilt) is uniform on [-1, 1].
    assert np.cos(np.deg2rad(gt.rlnAngleTilt)).mean() == pytest.approx(0.0, abs=0.1)
    assert (gt.rlnCanonViewId == -1).all()


def test_streaming_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK", 64)
    monkeypatch.setattr(dataset_mod, "PILOT", 100)
    out = tmp_path / "stream"
    n = 64 * 4 + 17
    result = simulate_dataset(replace(SMALL, box=16, pixel_size=8.0, n_particles=n), out)
    images = mrcfile.read(out / "particles.mrcs")
    assert images.shape == (n, 16, 16) and len(read_ground_truth(out)) == n
    assert np.all(images.std(axis=(1, 2)) > 0.5)  # the last, partial chunk was written too
    assert result.snr_measured == pytest.approx(0.1, rel=0.15)  # scale from a pilot of 100 good particles


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK", 16)
    calls = {"n": 0}
    original = dataset_mod.Simulator.clean

    def failing(self, rows):
        calls["n"] += 1
        if calls["n"] > 4:  # the pilot, then a couple of written chunks
            raise RuntimeError("disk on fire")
        return original(self, rows)

    monkeypatch.setattr(dataset_mod.Simulator, "clean", failing)
    out = tmp_path / "fail"
    with pytest.raises(RuntimeError, match="disk on fire"):
        simulate_dataset(replace(SMALL, n_particles=100), out)
    assert not out.exists()

    # An existing folder is kept, but nothing of ours is left in it.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        simulate_dataset(replace(SMALL, n_particles=100), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_existing_set_needs_overwrite(tmp_path):
    out = tmp_path / "twice"
    simulate_dataset(replace(SMALL, n_particles=10), out)
    with pytest.raises(InputError, match="already holds"):
        simulate_dataset(replace(SMALL, n_particles=10), out)
    simulate_dataset(replace(SMALL, n_particles=12, overwrite=True), out)
    assert len(read_ground_truth(out)) == 12


@pytest.mark.parametrize(
    "change, message",
    [
        ({"box": 33}, "even"),
        ({"snr": 0.0}, "inf for noise-free"),
        ({"junk_fraction": 1.5}, "junk fraction"),
        ({"defocus_range": (0.5, 2.5)}, "not µm"),
        ({"defocus_range": (20000.0, 10000.0)}, "min <= max"),
        ({"views": "many"}, "views"),
        ({"junk_kinds": ("noise", "ghosts")}, "ghosts"),
        ({"n_particles": 0}, "at least 1"),
    ],
)
def test_bad_settings(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        simulate_dataset(replace(SMALL, **change), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_image_names_are_project_relative(tmp_path, monkeypatch):
    # RELION resolves image names against the project directory it runs in: a set simulated into
    # Import/sim/ from the project directory must name Import/sim/particles.mrcs.
    monkeypatch.chdir(tmp_path)
    simulate_dataset(SimulationConfig(n_particles=4, box=32, junk_fraction=0.0), Path("Import/sim"))
    star = read_star(tmp_path / "Import/sim/particles.star")
    assert star.particles.rlnImageName[0] == "000001@Import/sim/particles.mrcs"
    assert read_ground_truth(tmp_path / "Import/sim").rlnCanonCleanImageName[0] == "000001@Import/sim/ground_truth_clean.mrcs"
    # Moved elsewhere with its stacks, the set still reads (the STAR's own folder is the fallback).
    monkeypatch.chdir(tmp_path / "Import")
    assert ParticleSource.from_star(star).read([3]).shape == (1, 32, 32)
