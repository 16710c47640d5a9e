"""``relion_canon_external --install-gui-template``: the settings file RELION's GUI loads, written by the real
command; and (with relion-gui, Xvfb and xdotool) loaded by the real RELION 3.1 GUI, which schedules a job
with them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from relion_canon.relion.gui_template import GUI_TEMPLATE, template_text
from relion_canon.relion.job_star import read_job_star
from tests.conftest import IN_CI
from tests.relion.helpers import MINIMAL_PIPELINE, external_script, snapshot

REPO = Path(__file__).resolve().parents[2]
PIPELINE_40 = ("# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 2\n\ndata_pipeline_processes\n\n"
               "loop_\n_rlnPipeLineProcessName #1\n_rlnPipeLineProcessAlias #2\n_rlnPipeLineProcessTypeLabel #3\n"
               "_rlnPipeLineProcessStatusLabel #4\nImport/job001/ None relion.importtomo Succeeded\n")


def install(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([external_script(), "--install-gui-template", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relion_canon_external: error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_template_files_are_what_the_command_writes(version):
    assert (REPO / "external_job" / f"relion{version}" / "job.star").read_text() == template_text(version)


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "default_pipeline.star").write_text(MINIMAL_PIPELINE)
    return tmp_path


def test_install_writes_the_template_once(project):
    before = snapshot(project)
    res = install(project, "--relion_version", "3.1")
    assert res.returncode == 0, res.stderr
    assert "Wrote" in res.stdout and "select External" in res.stdout
    written = project / GUI_TEMPLATE
    assert written.read_text() == template_text("3.1")
    job = read_job_star(written)
    assert job.version == "3.1" and job.options["fn_exe"] == "relion_canon_external"
    after = snapshot(project)
    assert set(after) - set(before) == {GUI_TEMPLATE} and all(after[k] == v for k, v in before.items())
    # Again: the same file is left alone.
    res = install(project, "--relion_version", "3.1")
    assert res.returncode == 0 and "left as it is" in res.stdout
    assert snapshot(project) == after


def test_install_reads_the_version_from_the_pipeline(project):
    (project / "default_pipeline.star").write_text(PIPELINE_40)
    res = install(project)
    assert res.returncode == 0, res.stderr
    assert "RELION 4.0" in res.stdout and (project / GUI_TEMPLATE).read_text() == template_text("4.0")


def test_install_asks_relion_on_path_in_a_new_project(project, require_relion):
    res = install(project)  # a new 3.1 project's pipeline does not tell its version
    assert res.returncode == 0, res.stderr
    assert "relion_refine" in res.stdout and (project / GUI_TEMPLATE).read_text() == template_text("3.1")


def test_install_refuses_to_replace_other_settings(project):
    saved = project / GUI_TEMPLATE
    saved.write_text(template_text("3.1").replace("param4_value     \"\"", "param4_value     7"))
    before = snapshot(project)
    one_line_error(install(project, "--relion_version", "3.1"), str(saved), "--force")
    assert snapshot(project) == before and "param4_value     7" in saved.read_text()
    res = install(project, "--relion_version", "3.1", "--force")
    assert res.returncode == 0, res.stderr
    assert saved.read_text() == template_text("3.1")


@pytest.mark.parametrize("args, words", [
    ((), ["default_pipeline.star", "project folder", "--force"]),
    (("--relion_version", "2.1"), ["3.1, 4.0 or 5.0", "'2.1'"]),
    (("--relion_version", "3.1", "--box", "48"), ["--box 48"]),
])
def test_install_errors_are_one_line_and_write_nothing(tmp_path, args, words):
    one_line_error(install(tmp_path, *args), *words)
    assert list(tmp_path.iterdir()) == []


# --- the real GUI ------------------------------------------------------------------------------------------

# Positions inside RELION 3.1.3's 800x800 main window (measured on a screenshot under Xvfb): the job-type
# list's last entry, and the Schedule button.
EXTERNAL_ITEM = (39, 329)
SCHEDULE_BUTTON = (529, 345)


@pytest.fixture
def gui_tools() -> None:
    missing = [t for t in ("relion", "Xvfb", "xdotool") if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install -y relion-gui xvfb xdotool)"
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


def _run(*args: str, env: dict, timeout: float = 30) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout


def test_relion_31_gui_loads_the_template(project, gui_tools):
    """Select External in the real GUI and press Schedule: the job it makes carries the template's settings,
    which the GUI can only have taken from the installed file."""
    assert install(project, "--relion_version", "3.1").returncode == 0
    (project / ".gui_projectdir").touch()  # what the GUI leaves in a project; without it, it asks first
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x900x24"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    gui = None
    try:
        with os.fdopen(read_fd) as pipe:
            display = ":" + pipe.readline().strip()
        env = {**os.environ, "DISPLAY": display}
        gui = subprocess.Popen(["relion"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        window = _run("xdotool", "search", "--sync", "--name", "RELION-3", env=env).split()[0]
        time.sleep(1)  # the window is mapped before FLTK has drawn its widgets
        for x, y in (EXTERNAL_ITEM, SCHEDULE_BUTTON):
            _run("xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1", env=env)
            time.sleep(1)
        job_star = project / "External/job001/job.star"
        deadline = time.monotonic() + 30
        while not job_star.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_star.exists(), "the GUI scheduled no External job"
    finally:
        for proc in (gui, xvfb):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    options = read_job_star(job_star).options
    assert options["fn_exe"] == "relion_canon_external"
    template = read_job_star(project / GUI_TEMPLATE).options
    for i in range(1, 11):
        assert options[f"param{i}_label"] == template[f"param{i}_label"]
        assert options[f"param{i}_value"] == template[f"param{i}_value"]
