"""Issue 14: every bad option and every bad particle set is refused before any work, on every front door of
`relion-canon` (run, cryosparc-job, info, simulate), as one line naming the option, or the file, row and column;
exit status 2 (info: 1), no traceback, nothing written. The External job's side is tests/relion/test_params_checks.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.lib.recfunctions as rfn
import pytest
from click.testing import CliRunner

from relion_canon.cli.main import cli
from tests.io.bad_inputs import BOX, CASES, make_case, simulated_set
from tests.working_copy import file_stamps, working_copy


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checks")
    simulated_set(root / "sim")
    return root


@pytest.fixture
def project(template, tmp_path, monkeypatch) -> Path:
    """A copy of the simulated set as the working directory (its image names are relative to it)."""
    return working_copy(template, tmp_path, monkeypatch)



def _refused(res, status: int = 2) -> str:
    """The one stderr line of a refused command (no traceback)."""
    assert res.exit_code == status, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    return lines[0]


# --- options ------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--j", "0"], "--j: must be at least 1, got 0"),
    (["--j", "-1"], "--j: must be at least 1, got -1"),
    (["--box", "16"], "--box: must be between 24 and 256, got 16"),
    (["--box", "300"], "--box: must be between 24 and 256, got 300"),
    (["--defocus-range", "20000", "5000"], "--defocus-range: expected 0 < min < max, got 20000 5000"),
    (["--defocus-range", "0.5", "2.5"], "--defocus-range: is in Å, not µm"),
    (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["--outlier-threshold", "nan"], "--outlier-threshold: must be a finite number, got nan"),
    (["--outlier-threshold", "inf"], "--outlier-threshold: must be a finite number, got inf"),
    (["--max-shift", "-1"], "--max-shift: must be at least 0, got -1"),
    (["--device", "gpu"], "--device: 'gpu' is not a device: use auto, cpu, cuda or cuda:N; did you mean cuda?"),
    (["--device", "gpu1"], "did you mean cuda:1?"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_run_refuses_a_bad_option_before_reading_anything(project, args, message):
    before = file_stamps(project)
    res = CliRunner().invoke(cli, ["run", "--i", "sim/particles.star", "--o", "out", *args])
    line = _refused(res)
    assert line.startswith(f"relion-canon: error: {args[0]}: ") and message in line
    assert file_stamps(project) == before and not (project / "out").exists()


def test_run_refuses_a_box_larger_than_the_particles(project):
    before = file_stamps(project)
    res = CliRunner().invoke(cli, ["run", "--i", "sim/particles.star", "--o", "out", "--box", str(2 * BOX)])
    assert _refused(res) == (f"relion-canon: error: --box {2 * BOX}: larger than the particles ({BOX} px): give at "
                             f"most {BOX}, or leave it empty to work at the particles' box")
    assert file_stamps(project) == before


def test_cryosparc_job_refuses_a_bad_option_before_connecting(project):
    # Port 9 (discard) on this machine: had the option passed, the error would be about the connection.
    res = CliRunner().invoke(cli, ["cryosparc-job", "--url", "http://127.0.0.1:9", "--project", "P1", "--workspace",
                                   "W1", "--input", "J1.particles", "--o", "out", "--device", "gpu"])
    assert _refused(res) == ("relion-canon: error: --device: 'gpu' is not a device: use auto, cpu, cuda or cuda:N; "
                             "did you mean cuda?")
    assert not (project / "out").exists()


def test_simulate_takes_j_like_every_command(project):
    res = CliRunner().invoke(cli, ["simulate", "--o", "s", "--n", "8", "--box", "32", "--j", "0", "--quiet"])
    assert _refused(res) == "relion-canon: error: --j: must be at least 1, got 0"
    assert not (project / "s").exists()
    help_text = CliRunner().invoke(cli, ["simulate", "--help"]).output
    assert "--j INTEGER" in help_text and "--threads" not in help_text
    # The old spelling still works (hidden).
    res = CliRunner().invoke(cli, ["simulate", "--o", "s", "--n", "8", "--box", "32", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (project / "s" / "particles.star").is_file()


# --- data: info and run apply the same rules ------------------------------------------------------------------

REFUSED = [case for case, (_, refused) in CASES.items() if refused]


@pytest.mark.parametrize("case", REFUSED)
def test_info_and_run_refuse_the_same_bad_data(project, case):
    star = make_case(project / "sim/particles.star", case, project / "sim" / f"{case}.star")
    message = CASES[case][0]
    info = CliRunner().invoke(cli, ["info", str(star.relative_to(project))])
    assert info.exit_code == 1 and message in _refused(info, 1)
    before = file_stamps(project)
    res = CliRunner().invoke(cli, ["run", "--i", str(star.relative_to(project)), "--o", "out"])
    line = _refused(res)
    assert line.startswith(f"relion-canon: error: sim/{case}.star") and message in line
    assert file_stamps(project) == before and not (project / "out").exists()


def test_duplicate_rows_are_a_warning_with_counts_in_info_and_run(project):
    star = make_case(project / "sim/particles.star", "duplicate_rows", project / "sim/dups.star")
    info = CliRunner().invoke(cli, ["info", "sim/dups.star"])
    assert info.exit_code == 0, info.output
    assert "warning: sim/dups.star: 3 rows repeat an earlier row exactly" in info.stdout
    assert "1 image is named by more than one row (4 rows in all;" in info.stdout
    res = CliRunner().invoke(cli, ["run", "--i", str(star.relative_to(project)), "--o", "out", "--quiet",
                                   "--train-particles", "all", "--classes", "1", "--no-refine"])
    assert res.exit_code == 0, res.output
    assert "Warning: sim/dups.star: 3 rows repeat an earlier row exactly" in res.output
    assert "Warning: sim/dups.star: 1 image is named by more than one row (4 rows in all;" in res.output
    weights = [float(line.split()[-1]) for line in _column(project / "out/particles.star", "rlnParticleFigureOfMerit")]
    assert weights and np.isfinite(weights).all()


def _column(star: Path, label: str) -> list[str]:
    """Each particle row cut down to ``label``'s value (read as text, not with the reader under test)."""
    lines = star.read_text().split("data_particles", 1)[1].splitlines()
    labels = [line.split()[0][1:] for line in lines if line.startswith("_")]
    j = labels.index(label)
    return [line.split()[j] for line in lines if "@" in line and not line.startswith("_")]


def test_a_stack_given_as_the_star_file_says_so(project):
    res = CliRunner().invoke(cli, ["run", "--i", "sim/particles.mrcs", "--o", "out"])
    assert _refused(res) == ("relion-canon: error: sim/particles.mrcs: this is an image stack; give the particles "
                             "STAR file (the .star that names its images)")
    # A stack renamed .star is recognised by its header.
    shutil.copy(project / "sim/particles.mrcs", project / "sim/renamed.star")
    res = CliRunner().invoke(cli, ["info", "sim/renamed.star"])
    assert "this is an image stack; give the particles STAR file" in _refused(res, 1)
    assert not (project / "out").exists()


def test_run_refuses_a_cs_without_uid_before_training(project):
    converted = CliRunner().invoke(cli, ["convert", "--i", "sim/particles.star", "--o", "cs/particles.cs"])
    assert converted.exit_code == 0, converted.output
    records = np.load(project / "cs/particles.cs")
    fields = [name for name in records.dtype.names if name != "uid"]
    with open(project / "cs/nouid.cs", "wb") as fh:
        np.save(fh, rfn.repack_fields(records[fields]))
    before = file_stamps(project)
    res = CliRunner().invoke(cli, ["run", "--i", "cs/nouid.cs", "--o", "out"])
    assert _refused(res) == ("relion-canon: error: cs/nouid.cs: no uid field: not a cryoSPARC particle file "
                             "(cryoSPARC gives every particle a uid)")
    assert file_stamps(project) == before and not (project / "out").exists()
    info = CliRunner().invoke(cli, ["info", "cs/nouid.cs"])
    assert "no uid field" in _refused(info, 1)
