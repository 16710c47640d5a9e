"""`relion-canon evaluate`: prints the table and the files, and turns bad input into one line and status 2."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.io.star import read_star, write_star
from tests.analysis.evaluation.helpers import fake_job, relion_reference, simulated_set


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sim = simulated_set(root / "sim", n=40, seed=7)
    return sim, fake_job(sim, root / "job", canonical=False, psi_offset=-30.0, sign=1)


def test_listed_in_help():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "evaluate" in res.output


def test_evaluate_against_truth_prints_table_and_paths(inputs, tmp_path):
    sim, job = inputs
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["evaluate", "--i", str(job), "--truth", str(sim), "--o", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "evaluation.json").read_text())
    assert result["angle"]["offset_deg"] == pytest.approx(-30.0, abs=1.5) and result["angle"]["sign"] == 1
    assert "| metric | relion_canon |" in res.stdout
    assert f"| psi rMSE (°) | {result['angle']['rmse_deg']:.4g} |" in res.stdout
    for name in ("evaluation.md", "evaluation.json", "evaluation.pdf", "roc.png"):
        assert str(out / name) in res.stdout and (out / name).is_file()


def test_relion_reference_alone_and_symmetry_option(inputs, tmp_path):
    sim, job = inputs
    ref = relion_reference(sim, tmp_path / "run_it020_data.star")
    res = CliRunner().invoke(cli, ["evaluate", "--i", str(job / "particles.star"), "--relion", str(ref),
                                   "--o", str(tmp_path / "eval"), "--symmetry", "2"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["reference"].startswith("RELION") and result["angle"]["symmetry"] == 2
    assert "mod 180°" in res.stdout


def test_bad_input_is_one_line_with_status_2(inputs, tmp_path):
    sim, job = inputs
    runner = CliRunner()
    missing = runner.invoke(cli, ["evaluate", "--i", str(tmp_path / "nothing"), "--truth", str(sim),
                                  "--o", str(tmp_path / "e1")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"relion-canon: error: {tmp_path / 'nothing'}: STAR file not found"
    assert not (tmp_path / "e1").exists()

    # More job particles than the truth has, under names the truth does not know: no safe join.
    star = read_star(job / "particles.star")
    bigger = star.with_particles(star.particles.iloc[list(range(len(star))) + [0]].reset_index(drop=True))
    bigger.particles.loc[len(star), "rlnImageName"] = "000001@elsewhere/other.mrcs"
    write_star(bigger, tmp_path / "bigger.star")
    res = runner.invoke(cli, ["evaluate", "--i", str(tmp_path / "bigger.star"), "--truth", str(sim),
                              "--o", str(tmp_path / "e2")])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.count("\n") == 0 and f"row {len(star) + 1}" in line and "other.mrcs" in line

    usage = runner.invoke(cli, ["evaluate", "--i", str(job), "--o", str(tmp_path / "e3")])
    assert usage.exit_code == 2 and "--truth" in usage.output


def test_truth_of_another_simulated_set_is_refused(inputs, tmp_path):
    """Same size, same stack file name, another folder and seed: joined on stack file name and image number it
    would score psi near 90° and an AUC near 0.5; the simulated defocus shows it is another set."""
    sim, job = inputs
    other = simulated_set(tmp_path / "elsewhere" / "sim", n=40, seed=8)
    before = sorted(p.name for p in job.iterdir())
    res = CliRunner().invoke(cli, ["evaluate", "--i", str(job), "--truth", str(other), "--o", str(tmp_path / "e")])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in res.output
    assert line.startswith(f"relion-canon: error: {job / 'particles.star'}, row 1: the job's particles are not those "
                           f"of {other / 'ground_truth.star'}: rlnDefocusU ")
    assert "(40 of 40 rows differ); give the ground truth of the set the job ran on" in line
    assert not (tmp_path / "e").exists() and sorted(p.name for p in job.iterdir()) == before
    # The same set under another folder (a RELION project's copy) is still accepted.
    copy = tmp_path / "copy" / "sim"
    shutil.copytree(sim, copy)
    res = CliRunner().invoke(cli, ["evaluate", "--i", str(job), "--truth", str(copy), "--o", str(tmp_path / "e2")])
    assert res.exit_code == 0, res.output
