"""`relion-canon simulate` on the command line: options reach the configuration, errors are one line."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from relion_canon.cli.simulate_cmd import simulate
from relion_canon.simulate import read_ground_truth


def _run(args):
    return CliRunner().invoke(simulate, [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_a_set(tmp_path):
    out = tmp_path / "set"
    result = _run(["--o", out, "--n", 30, "--box", 32, "--pixel-size", 5, "--seed", 3, "--views", 2,
                   "--psi-sigma", 15, "--shift-sigma", 2, "--astigmatism", 300, "--defocus-range", 6000, 12000,
                   "--junk-fraction", 0.2, "--junk-kinds", "noise,aggregate", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Wrote 30 particles (6 junk" in result.output
    gt = read_ground_truth(out)
    assert set(gt.rlnCanonJunkKind) == {"none", "noise", "aggregate"}
    assert gt.rlnDefocusV.between(6000 - 150, 12000 - 150).all()
    assert sorted(gt.rlnCanonViewId[gt.rlnCanonJunkKind == "none"].unique()) == [0, 1]
    info = json.loads((out / "simulation.json").read_text())
    assert info["config"]["psi_sigma"] == 15 and info["config"]["views"] == 2
    assert mrcfile.read(out / "particles.mrcs").shape == (30, 32, 32)


def test_cli_noise_free_without_ctf(tmp_path):
    out = tmp_path / "clean"
    result = _run(["--o", out, "--n", 5, "--box", 32, "--snr", "inf", "--no-ctf", "--junk-fraction", 0,
                   "--defocus-values", "10000,20000", "--psi", 30, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "noise-free" in result.output
    gt = read_ground_truth(out)
    assert (gt.rlnAnglePsi == 30).all() and (gt.rlnDefocusU == 0).all()
    particles = (out / "particles.star").read_text()
    assert "rlnDefocusU" not in particles
    images = mrcfile.read(out / "particles.mrcs")
    np.testing.assert_allclose(images, images[:1].repeat(5, 0), atol=1e-5)  # same view, same psi, no noise


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--source", "{tmp}/missing.mrc"], "missing.mrc"),
        (["--source", "{tmp}/model.xyz"], "model.xyz"),
        (["--source", "{tmp}/junk.pdb"], "junk.pdb"),
        (["--snr", "0"], "inf for noise-free"),
        (["--box", "31"], "even"),
        (["--junk-kinds", "noise,ghosts"], "ghosts"),
    ],
)
def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, args, needle):
    (tmp_path / "junk.pdb").write_text("not a model\n")
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(simulate, ["--o", str(out), "--n", "5", "--box", "32", "--quiet", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relion-canon: error:") and needle in lines[0]
    assert not (out / "particles.star").exists()


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "set"
    assert _run(["--o", out, "--n", 4, "--box", 16, "--quiet"]).exit_code == 0
    result = CliRunner().invoke(simulate, ["--o", str(out), "--n", "4", "--box", "16", "--quiet"])
    assert result.exit_code == 2 and "--force" in result.output
    assert _run(["--o", out, "--n", 6, "--box", 16, "--quiet", "--force"]).exit_code == 0
    assert len(read_ground_truth(out)) == 6
