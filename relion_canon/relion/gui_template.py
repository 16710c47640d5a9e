"""The External job's settings as RELION's GUI loads them: ``relion_canon_external --install-gui-template``.

RELION 3.1.3's GUI has no file chooser for a job's settings: *Jobs ▸ Load job settings* reads
``.gui_externaljob.star`` from the project folder, and so does selecting *External* in the job list. That
file has the format of a ``job.star``; RELION writes it itself on *Jobs ▸ Save job settings*. 4.0 and 5.0
read the same file the same way (and also offer *Jobs ▸ Load job.star* with a file chooser).

The templates in ``external_job/relion3.1``, ``relion4.0`` and ``relion5.0`` are :func:`template_text`'s text
(a test keeps them equal), so that an installed package, which has no ``external_job`` folder, writes the same.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.options import BOOL, JobOption
from relion_canon.relion.job_star import DEFAULT_PIPELINE, VERSIONS, normalise_version, version_from_pipeline
from relion_canon.relion.params import external_params, param_text

GUI_TEMPLATE = ".gui_externaljob.star"
INSTALL_FLAG = "--install-gui-template"
EXECUTABLE = "relion_canon_external"

# The options of Param1..Param10, by field name; each row's label is the option's External label from the table
# (RELION passes ``--<label> <value>``).
PARAMS: tuple[str, ...] = ("mode", "model", "model_path", "epochs", "box", "outlier_method", "outlier_threshold",
                           "defocus_range", "labels", "gpu")

# The widest label, in pixels, that RELION's GUI shows whole; a longer one is scrolled to its end, and reads
# "utlier_method". 3.1.3, 4.0 and 5.0 place a param's label box with place2 (src/gui_jobwindow.cpp): half of
# WCOL2 less COLUMN_SEPARATION, 97 px, text at ENTRY_FONTSIZE 13 (src/gui_entries.h). Measured in relion-gui
# 3.1.3 under Xvfb (FLTK 1.3.8, Helvetica drawn as DejaVu Sans by Xft): 88 and 89 px of text show whole, 90 px
# is scrolled. Every External label fits this, with room to spare (tests/relion/test_gui_template.py).
LABEL_WIDTH_PX = 89


def _shown_value(entry: JobOption) -> str:
    """A param with choices or yes/no shows the job's default (from the option table), so that the GUI shows
    what Run does and what it can be changed to; numbers, paths and the GPUs are left empty, which the job
    reads as its default (often automatic, as the particles' own box)."""
    if entry.option.kind == BOOL or entry.option.choices is not None:
        return param_text(entry.default)
    return ""


def template_text(version: str) -> str:
    """The job settings of this job for RELION ``version`` (3.1, 4.0 or 5.0), as RELION writes them."""
    if version not in VERSIONS:
        raise ValueError(f"unknown RELION version {version!r}; one of {', '.join(VERSIONS)}")
    star_version = 50001 if version == "5.0" else 30001
    if version == "3.1":
        header = ["_rlnJobType                            99", "_rlnJobIsContinue                       0"]
    else:
        header = ["_rlnJobTypeLabel             relion.external", "_rlnJobIsContinue                       0",
                  "_rlnJobIsTomo                           0"]
    entries = {entry.name: entry for entry in external_params()}
    rows = [("fn_exe", EXECUTABLE), ("in_part", '""')]
    for i, name in enumerate(PARAMS, start=1):
        entry = entries[name]
        rows += [(f"param{i}_label", entry.external_param), (f"param{i}_value", _shown_value(entry) or '""')]
    lines = ["", f"# version {star_version}", "", "data_job", "", *header, " ", "", f"# version {star_version}", "",
             "data_joboptions_values", "", "loop_ ", "_rlnJobOptionVariable #1 ", "_rlnJobOptionValue #2 ",
             *(f"{name:<16} {value}" for name, value in rows), " ", ""]
    return "\n".join(lines)


def project_version(project: Path, explicit: str | None) -> tuple[str, str]:
    """(RELION version, how it was found): ``--relion_version``, else the project's ``default_pipeline.star``
    when its tables tell (a new project's do not), else the ``relion_refine`` on PATH."""
    if explicit:
        return normalise_version(explicit), "given with --relion_version"
    found = version_from_pipeline(project / DEFAULT_PIPELINE)
    if found:
        return found, str(DEFAULT_PIPELINE)
    exe = shutil.which("relion_refine")
    if exe is not None:
        try:
            res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
            for line in res.stdout.splitlines():
                if line.startswith("RELION version:"):
                    return normalise_version(line.split(":", 1)[1].strip()), f"{exe} --version"
        except (OSError, subprocess.SubprocessError, InputError):
            pass
    raise InputError("cannot tell which RELION this project is for (neither default_pipeline.star nor a "
                     "relion_refine on PATH tells): add --relion_version 3.1, 4.0 or 5.0")


def install_gui_template(project: str | Path, version: str, force: bool = False) -> tuple[Path, bool]:
    """Write :data:`GUI_TEMPLATE` for ``version`` into ``project``; (its path, whether it was written). The same
    file already there is left alone; a different one (the user's saved settings) only with ``force``."""
    project = Path(project)
    path = project / GUI_TEMPLATE
    text = template_text(version)
    if path.is_symlink() or path.exists():
        if not path.is_file():
            raise InputError("exists and is not a file; nothing was written", path)
        try:
            current = path.read_text(errors="replace")
        except OSError as exc:
            raise InputError(f"cannot read it ({exc.strerror}); nothing was written", path) from None
        if current == text:
            return path, False
        if not force:
            raise InputError("already holds other External job settings (saved with Jobs > Save job settings?); "
                             "add --force to replace them", path)
    if not (project / DEFAULT_PIPELINE).is_file() and not force:
        raise InputError(f"no {DEFAULT_PIPELINE} here: run this from the RELION project folder (where you start "
                         "the GUI), or add --force to write the file here anyway", project.resolve())
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write it ({exc.strerror}); nothing was written", path) from None
    return path, True


def main(argv: Sequence[str]) -> int:
    """``relion_canon_external --install-gui-template [--relion_version V] [--force]``: writes the file into the
    current folder; 0 on success, 1 with one line on stderr otherwise."""
    parser = argparse.ArgumentParser(prog=f"{EXECUTABLE} {INSTALL_FLAG}", allow_abbrev=False, add_help=False)
    parser.add_argument(INSTALL_FLAG, action="store_true")
    parser.add_argument("--relion_version")
    parser.add_argument("--force", action="store_true")
    args, unknown = parser.parse_known_args(list(argv))
    try:
        if unknown:
            raise InputError(f"{INSTALL_FLAG} takes only --relion_version and --force, not {' '.join(unknown)}")
        version, source = project_version(Path.cwd(), args.relion_version)
        path, written = install_gui_template(Path.cwd(), version, args.force)
    except InputError as exc:
        print(f"{EXECUTABLE}: error: {exc}", file=sys.stderr)
        return 1
    if written:
        print(f"Wrote {path} (RELION {version}, from {source}). In the GUI, select External in the job list "
              f"(or Jobs > Load job settings): the Input and Params tabs are filled in for {EXECUTABLE}.")
    else:
        print(f"{path} already holds these settings (RELION {version}); left as it is.")
    return 0
