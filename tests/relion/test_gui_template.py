"""``relion_canon_external --install-gui-template``: the settings file RELION's GUI loads, written by the real
command; and (with relion-gui, Xvfb and xdotool) loaded by the real RELION 3.1 GUI, which schedules a job
with them."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from relion_canon.relion.gui_template import GUI_TEMPLATE, LABEL_WIDTH_PX, PARAMS, template_text
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


# --- labels the GUI shows whole ----------------------------------------------------------------------------

# Room a label keeps beyond what the measured DejaVu Sans needs: half a narrow character, for a Helvetica drawn
# a little wider elsewhere.
LABEL_MARGIN_PX = 4


def label_width_px(label: str) -> int:
    """The label's width as relion-gui draws it: FLTK's Helvetica is DejaVu Sans under Xft (matplotlib ships the
    same font), at RELION's ENTRY_FONTSIZE 13, each character's advance rounded to whole pixels as Xft does."""
    import matplotlib
    from PIL import ImageFont

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), 13)
    return sum(math.floor(font.getlength(c) + 0.5) for c in label)


def test_the_width_model_reproduces_what_the_gui_showed():
    """The strings measured in relion-gui 3.1.3 under Xvfb: 88 and 89 px were whole, 90 and 92 px scrolled;
    the three long labels of issue 14 were cut ("utlier_method")."""
    for whole in ("aaaaaaaaaaa", "aaaaaaaaaafl", "aaaaaaaaaa_", "max_shift_px"):
        assert label_width_px(whole) <= LABEL_WIDTH_PX, whole
    for scrolled in ("aaaaaaaaaaff", "aaaaaaaaa__l", "aaaaaaaaaaal", "outlier_method", "outlier_threshold",
                     "defocus_range"):
        assert label_width_px(scrolled) > LABEL_WIDTH_PX, scrolled


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_every_label_fits_the_gui(version):
    from relion_canon.relion.params import external_params

    options = read_job_star(REPO / "external_job" / f"relion{version}" / "job.star").options
    written = [options[f"param{i}_label"] for i in range(1, len(PARAMS) + 1)]
    # The template's ten, and every other label a user may type into a row.
    for label in {*written, *(e.external_param for e in external_params())}:
        assert label_width_px(label) <= LABEL_WIDTH_PX - LABEL_MARGIN_PX, (label, label_width_px(label))


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
# list's last entry, the Schedule button and the Params tab.
EXTERNAL_ITEM = (39, 329)
SCHEDULE_BUTTON = (529, 345)
PARAMS_TAB = (280, 15)
# On the Params tab: the label boxes span x 480-577 (97 px), Param1's box starts at y 43, one row every 22 px;
# a label's text starts at x 484. A label too wide for its box is scrolled to its end, which FLTK puts at
# x 569-571 (measured); a whole label of at most LABEL_WIDTH_PX - LABEL_MARGIN_PX ends left of SCROLLED_END.
LABEL_BOX_X = (481, 577)
LABEL_ROW_Y0, LABEL_ROW_STEP = 43, 22
SCROLLED_END = 567


@pytest.fixture
def gui_tools() -> None:
    missing = [t for t in ("relion", "Xvfb", "xdotool", "xwd") if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install -y relion-gui xvfb xdotool x11-apps)"
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


def _run(*args: str, env: dict, timeout: float = 30) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout


@contextlib.contextmanager
def relion_gui(project: Path) -> Iterator[Callable[..., None]]:
    """The real RELION GUI on ``project`` under Xvfb; yields click(*positions) (one click each, in the main
    window), with the window id as click.window and the X environment as click.env."""
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

        def click(*positions: tuple[int, int]) -> None:
            for x, y in positions:
                _run("xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1", env=env)
                time.sleep(1)

        click.window, click.env = window, env  # type: ignore[attr-defined]
        yield click
    finally:
        for proc in (gui, xvfb):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def screenshot(window: str, env: dict) -> np.ndarray:
    """The window as an (height, width, 3) RGB array, from xwd's ZPixmap dump (no image library reads XWD)."""
    data = subprocess.run(["xwd", "-silent", "-id", window], env=env, capture_output=True, timeout=30,
                          check=True).stdout
    (header_size, _, pixmap_format, _, width, height, _, byte_order, _, _, _, bits_per_pixel, bytes_per_line,
     _, red_mask, green_mask, blue_mask, _, _, ncolors) = struct.unpack(">20I", data[:80])
    assert pixmap_format == 2 and bits_per_pixel == 32, (pixmap_format, bits_per_pixel)  # ZPixmap, 32 bpp
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data[start:start + height * bytes_per_line], dtype="<u4" if byte_order == 0 else ">u4")
    pixels = rows.reshape(height, bytes_per_line // 4)[:, :width]
    channels = [(pixels & mask) >> (int(mask).bit_length() - 8) for mask in (red_mask, green_mask, blue_mask)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def test_relion_31_gui_loads_the_template(project, gui_tools):
    """Select External in the real GUI and press Schedule: the job it makes carries the template's settings,
    which the GUI can only have taken from the installed file."""
    assert install(project, "--relion_version", "3.1").returncode == 0
    with relion_gui(project) as click:
        click(EXTERNAL_ITEM, SCHEDULE_BUTTON)
        job_star = project / "External/job001/job.star"
        deadline = time.monotonic() + 30
        while not job_star.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_star.exists(), "the GUI scheduled no External job"
    options = read_job_star(job_star).options
    assert options["fn_exe"] == "relion_canon_external"
    template = read_job_star(project / GUI_TEMPLATE).options
    for i in range(1, 11):
        assert options[f"param{i}_label"] == template[f"param{i}_label"]
        assert options[f"param{i}_value"] == template[f"param{i}_value"]


def test_relion_31_gui_shows_every_label_whole(project, gui_tools, tmp_path):
    """The Params tab in the real GUI: each of the ten label boxes holds its label unscrolled (its text ends
    left of where FLTK puts the end of a label too wide for the box, as "utlier_method" was)."""
    from PIL import Image

    assert install(project, "--relion_version", "3.1").returncode == 0
    with relion_gui(project) as click:
        click(EXTERNAL_ITEM, PARAMS_TAB)
        image = screenshot(click.window, click.env)  # type: ignore[attr-defined]
    Image.fromarray(image).save(tmp_path / "params_tab.png")  # kept for a look when this fails
    grey = image.mean(axis=-1)
    labels = [read_job_star(project / GUI_TEMPLATE).options[f"param{i}_label"] for i in range(1, 11)]
    for i, label in enumerate(labels):
        y0 = LABEL_ROW_Y0 + LABEL_ROW_STEP * i
        box = grey[y0 + 3:y0 + 16, LABEL_BOX_X[0]:LABEL_BOX_X[1]]
        ink = np.flatnonzero((box < 100).any(axis=0)) + LABEL_BOX_X[0]
        assert ink.size, f"Param{i + 1}'s label box is empty (see {tmp_path / 'params_tab.png'})"
        assert ink[-1] < SCROLLED_END, f"{label!r} is cut off (text ends at x {ink[-1]}; see {tmp_path})"
