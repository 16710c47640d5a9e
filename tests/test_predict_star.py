"""End to end through the CLI: simulate → train → predict → a STAR whose psi is right (issue acceptance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from relion_canon.analysis.metrics import align_angles
from relion_canon.cli.main import cli
from relion_canon.context import QUIET
from relion_canon.errors import InputError
from relion_canon.io import read_star, write_star
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> dict[str, Path]:
    """1,000 particles, 32 px, one view, uniform psi, CTF, SNR 1: 800 to train on, 200 held out."""
    root = tmp_path_factory.mktemp("wf")
    simulate_dataset(SimulationConfig(n_particles=1000, box=32, pixel_size=5.0, snr=1.0, junk_fraction=0.0, seed=11),
                     root / "sim")
    star = read_star(root / "sim" / "particles.star")
    truth = read_ground_truth(root / "sim")
    labelled = star.with_columns({"rlnAnglePsi": truth["rlnAnglePsi"].to_numpy()})  # as after a Class2D
    rows = np.arange(1000)
    paths = {
        "train": write_star(star.subset(rows < 800), root / "train.star"),
        "train_labelled": write_star(labelled.subset(rows < 800), root / "train_labelled.star"),
        "heldout": write_star(star.subset(rows >= 800), root / "heldout.star"),
        "root": root,
    }
    paths["truth_heldout"] = truth["rlnAnglePsi"].to_numpy()[800:]
    return paths


def _run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _heldout_error(split, model_dir: Path) -> float:
    out = model_dir / "heldout_pred.star"
    _run("predict", "--i", str(split["heldout"]), "--model", str(model_dir / "model.pt"), "--o", str(out), "--quiet")
    pred = read_star(out).particles
    # Every input column kept, in order, and psi in RELION's range.
    assert list(pred.columns[: len(read_star(split["heldout"]).particles.columns)]) == list(
        read_star(split["heldout"]).particles.columns)
    assert pred["rlnAnglePsi"].between(-180, 180, inclusive="left").all()
    np.testing.assert_array_equal(pred["rlnAnglePsiPrior"], pred["rlnAnglePsi"])
    return align_angles(pred["rlnAnglePsi"].to_numpy(), split["truth_heldout"]).rmse


def _losses(output: str, key: str) -> list[float]:
    return [float(tok.split("=")[1]) for line in output.splitlines() if line.startswith("epoch ")
            for tok in line.split() if tok.startswith(key + "=")]


def test_rotinv_ae_with_labels_gets_within_a_few_degrees(split):
    out_dir = split["root"] / "labels"
    output = _run("train", "--i", str(split["train_labelled"]), "--o", str(out_dir), "--model", "rotinv-ae",
                  "--labels", "--epochs", "6", "--batch-size", "32", "--lr", "2e-3", "--set", "width=16", "--quiet")
    losses = _losses(output, "model/loss")
    assert len(losses) == 6 and losses[-1] < losses[0]
    rmse = _heldout_error(split, out_dir)
    assert rmse < 6.0, rmse


def test_rotinv_ae_without_labels_learns_a_consistent_frame(split):
    out_dir = split["root"] / "self"
    output = _run("train", "--i", str(split["train"]), "--o", str(out_dir), "--model", "rotinv-ae", "--epochs", "8",
                  "--batch-size", "32", "--lr", "2e-3", "--set", "width=16", "--set", "lambda_adv=0", "--quiet")
    losses = _losses(output, "model/loss")
    assert losses[-1] < losses[0]
    rmse = _heldout_error(split, out_dir)
    assert rmse < 20.0, rmse  # chance is 104°


def test_vaegan_trains_and_predicts_better_than_chance(split):
    out_dir = split["root"] / "vaegan"
    output = _run("train", "--i", str(split["train"]), "--o", str(out_dir), "--model", "vaegan", "--epochs", "6",
                  "--batch-size", "32", "--lr", "1e-3", "--quiet")
    losses = _losses(output, "model/loss")
    assert losses[-1] < losses[0]
    rmse = _heldout_error(split, out_dir)
    assert rmse < 60.0, rmse  # chance is 104°


def test_spatial_vae_baseline_trains_and_predicts(split):
    # The baseline, at the small sizes its own benchmarks use (its full-size MLPs take minutes per epoch).
    # On this nearly two-fold phantom at SNR 1 its angle is, for some seeds, no better than random angles
    # after the fitted offset and sign. So only what it does every time is asserted: it learns (the loss
    # falls) and gives each particle its own angle. benchmarks/papers measures its accuracy (see its README).
    out_dir = split["root"] / "spatial-vae"
    output = _run("train", "--i", str(split["train"]), "--o", str(out_dir), "--model", "spatial-vae", "--epochs", "6",
                  "--batch-size", "32", "--lr", "1e-3", "--set", "encoder_hidden=256", "--set", "generator_hidden=64",
                  "--quiet")
    losses = _losses(output, "model/loss")
    assert losses[-1] < losses[0], losses
    rmse = _heldout_error(split, out_dir)
    assert 0 <= rmse <= 180
    psi = np.deg2rad(read_star(out_dir / "heldout_pred.star").particles["rlnAnglePsi"].to_numpy())
    # Circular spread 1 − |mean resultant|: 0 when every particle gets one angle (a collapsed encoder, or an
    # angle path that ignores the image), ~1 for angles all round the circle.
    assert 1 - abs(np.exp(1j * psi).mean()) > 0.1


def test_predict_refuses_a_grid_it_cannot_reach(split, tmp_path):
    other = tmp_path / "other"
    simulate_dataset(SimulationConfig(n_particles=20, box=32, pixel_size=4.0, junk_fraction=0.0), other)
    res = CliRunner().invoke(cli, ["predict", "--i", str(other / "particles.star"), "--model",
                                   str(split["root"] / "labels" / "model.pt"), "--o", str(tmp_path / "x.star")])
    assert res.exit_code == 2
    assert "was trained on 32 px images at 5 Å/px" in res.stderr and "cannot be resampled" in res.stderr
    assert not (tmp_path / "x.star").exists()


def test_predict_downsamples_a_larger_box_of_the_same_field_of_view(split, tmp_path):
    big = tmp_path / "big"
    simulate_dataset(SimulationConfig(n_particles=50, box=64, pixel_size=2.5, snr=1.0, junk_fraction=0.0, seed=5), big)
    _run("predict", "--i", str(big / "particles.star"), "--model", str(split["root"] / "labels" / "model.pt"),
         "--o", str(tmp_path / "big_pred.star"), "--quiet")
    pred = read_star(tmp_path / "big_pred.star").particles["rlnAnglePsi"].to_numpy()
    truth = read_ground_truth(big)["rlnAnglePsi"].to_numpy()
    assert align_angles(pred, truth).rmse < 20.0


def test_predict_in_slices_writes_what_one_slice_writes(split, tmp_path, monkeypatch):
    from relion_canon.io import star_stream
    from relion_canon.predict_star import predict_file

    model = split["root"] / "labels" / "model.pt"
    whole = predict_file(split["heldout"], model, tmp_path / "whole.star", context=QUIET)
    monkeypatch.setattr(star_stream, "CHUNK_ROWS", 64)  # 200 particles: four slices
    sliced = predict_file(split["heldout"], model, tmp_path / "sliced.star", context=QUIET)
    assert sliced.read_bytes() == whole.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind

    # An image past the end of its stack in the third slice is named by its row in the whole file.
    lines = Path(split["heldout"]).read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "@" in line)
    row = 150
    name = lines[first + row - 1].split()[0]
    lines[first + row - 1] = lines[first + row - 1].replace(name, "999999@" + name.split("@", 1)[1], 1)
    bad = tmp_path / "bad.star"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"bad\.star, row {row}: .*999999"):
        predict_file(bad, model, tmp_path / "bad_pred.star", context=QUIET)
    assert not (tmp_path / "bad_pred.star").exists()
