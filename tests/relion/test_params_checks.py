"""Issue 14, the RELION External job's side: a misspelt param label, a value the option table refuses, and every bad
particle set `info` and `run` refuse end the job at once as RELION_JOB_EXIT_FAILURE, with one line in run.err
naming the param, or the file, row and column; no traceback, nothing in the job folder but the exit file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from relion_canon.relion.external import main
from tests.io.bad_inputs import CASES, make_case, simulated_set
from tests.relion.helpers import MINIMAL_PIPELINE, external_script
from tests.working_copy import file_stamps, working_copy

OUT = "External/job001/"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("params") / "project"
    root.mkdir()
    (root / "default_pipeline.star").write_text(MINIMAL_PIPELINE)
    simulated_set(root / "Input")
    return root


@pytest.fixture
def project(template, tmp_path, monkeypatch) -> Path:
    return working_copy(template, tmp_path, monkeypatch)



def _failed(project: Path, before: dict[str, int], rc: int, err: str) -> str:
    """The job failed at once: status 1, only the exit file written, one line on stderr; that line."""
    assert rc == 1, err
    after = file_stamps(project)
    assert {k for k in after if before.get(k) != after[k]} == {OUT + "RELION_JOB_EXIT_FAILURE"}
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _run(project: Path, capsys, *args: str, in_parts: str = "Input/particles.star") -> str:
    before = file_stamps(project)
    rc = main(["--o", OUT, "--in_parts", in_parts, "--j", "1", *args, "--pipeline_control", OUT])
    return _failed(project, before, rc, capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["--epoch", "0"], "unknown argument(s) --epoch 0 (did you mean --epochs?); the params this job knows: mode, box,"),
    (["--j", "0"], "param j: must be at least 1, got 0"),
    (["--box", "300"], "param box: must be between 24 and 256, got 300"),
    (["--box", "64"], "--box 64: larger than the particles (32 px)"),
    (["--epochs", "0"], "param epochs: must be at least 1, got 0"),
    (["--outlier_z", "nan"], "param outlier_z: must be a finite number, got nan"),
    (["--max_shift", "-1"], "param max_shift: must be at least 0, got -1"),
    (["--df_range", "20000,5000"], "param df_range: expected 0 < min < max, got 20000 5000"),
    # An old label is read as the param it was, and named as the user wrote it.
    (["--outlier_threshold", "inf"], "param outlier_threshold: must be a finite number, got inf"),
    (["--max_shift_px", "-1"], "param max_shift_px: must be at least 0, got -1"),
    (["--defocus_range", "20000,5000"], "param defocus_range: expected 0 < min < max, got 20000 5000"),
    (["--outlier_method", "dbscan"], "param outlier_method: 'dbscan' is not one of ensemble, iforest, lof, covariance"),
    (["--outliers", "lof", "--outlier_method", "iforest"],
     "param outliers is given twice, as --outliers and --outlier_method: keep one"),
    (["--outlier_metod", "lof"], "unknown argument(s) --outlier_metod lof (did you mean --outliers?)"),
])
def test_bad_param_fails_the_job_at_once(project, capsys, args, message):
    line = _run(project, capsys, *args)
    assert line.startswith("relion_canon_external: error: ") and message in line


def test_unknown_label_lists_every_known_label(project, capsys):
    from relion_canon.relion.params import external_params

    line = _run(project, capsys, "--epoch", "3")
    known = line.split("knows: ", 1)[1]
    for entry in external_params():
        assert entry.external_param in known
        for alias in entry.option.external_aliases:  # the short labels only, as the GUI shows them
            assert alias not in known


@pytest.mark.parametrize("case", [case for case, (_, refused) in CASES.items() if refused])
def test_bad_particles_fail_the_job_as_info_and_run_refuse_them(project, capsys, case):
    make_case(project / "Input/particles.star", case, project / "Input" / f"{case}.star")
    line = _run(project, capsys, in_parts=f"Input/{case}.star")
    assert line.startswith(f"relion_canon_external: error: Input/{case}.star") and CASES[case][0] in line


def test_a_stack_given_as_input_particles_says_so(project, capsys):
    line = _run(project, capsys, in_parts="Input/particles.mrcs")
    assert line == ("relion_canon_external: error: Input/particles.mrcs: this is an image stack; give the particles "
                    "STAR file (the .star that names its images)")


def test_misspelt_label_through_the_installed_script(project):
    """As RELION runs it: the console script, the misspelt label among the params."""
    before = file_stamps(project)
    proc = subprocess.run([external_script(), "--o", OUT, "--in_parts", "Input/particles.star", "--epoch", "2",
                           "--j", "1"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))  # this tree, wherever it is installed from
    line = _failed(project, before, proc.returncode, proc.stderr)
    assert line.startswith("relion_canon_external: error: unknown argument(s) --epoch 2 (did you mean --epochs?)")


@pytest.mark.parametrize("case", ["negative_defocus", "constant_images"])
def test_bad_particles_fail_before_the_torchrun_processes(project, capsys, case):
    """With several GPUs the job runs in torchrun processes: the data is checked before they start, so the job
    fails at once with one line, as with one device, and no process is started."""
    make_case(project / "Input/particles.star", case, project / "Input" / f"{case}.star")
    before = file_stamps(project)
    rc = main(["--o", OUT, "--in_parts", f"Input/{case}.star", "--j", "1", "--gpu", "0,1", "--epochs", "1"])
    captured = capsys.readouterr()
    line = _failed(project, before, rc, captured.err)
    assert line.startswith(f"relion_canon_external: error: Input/{case}.star") and CASES[case][0] in line
    assert "Running on GPUs" not in captured.out


def test_a_job_saved_with_the_old_labels_still_runs(project, capsys):
    """The labels before they were shortened, as a job.star saved then passes them, through the whole job at
    smoke size: every one reaches the job's configuration."""
    before = file_stamps(project)
    rc = main(["--o", OUT, "--in_parts", "Input/particles.star", "--j", "1", "--epochs", "1", "--refine", "no",
               "--outlier_method", "lof", "--outlier_threshold", "3", "--defocus_range", "5000,25000",
               "--write_canonical", "--train_particles", "20", "--max_shift_px", "2",
               "--pipeline_control", OUT])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (project / OUT / "RELION_JOB_EXIT_SUCCESS").exists() and "Traceback" not in captured.err
    after = file_stamps(project)
    assert {k for k in after if before.get(k) != after[k]} <= {k for k in after if k.startswith(OUT)}
    assert set(before) <= set(after)  # the input is left as it was, and only the job folder is new
    config = json.loads((project / OUT / "report.json").read_text())["config"]
    assert {key: config[key] for key in ("outlier_method", "outlier_threshold", "defocus_range", "write_canonical",
                                         "train_particles", "max_shift_px")} == \
        {"outlier_method": "lof", "outlier_threshold": 3.0, "defocus_range": [5000.0, 25000.0],
         "write_canonical": True, "train_particles": 20, "max_shift_px": 2.0}
