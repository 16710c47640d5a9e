"""The output folder: inputs never overwritten, one job at a time, whole result sets, a full disk in one line.

Locks and kills are exercised with real processes (a lock held by another process, a process killed with
SIGKILL mid-job); the full disk with a real, tiny tmpfs where this machine lets a user mount one (a mount
namespace), and always with the real file-size limit (RLIMIT_FSIZE → EFBIG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.output_dir import (
    JOURNAL_FILE,
    LOCK_FILE,
    PREVIOUS_DIR,
    FolderBusy,
    check_finished,
    output_folder,
    refuse_overwrite,
)

REPO = Path(__file__).resolve().parents[2]
HIDDEN = {LOCK_FILE, JOURNAL_FILE, PREVIOUS_DIR}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _earlier_run(folder: Path) -> dict[str, str]:
    with output_folder(folder):
        _write(folder / "particles.star", "run 1 particles")
        _write(folder / "report.json", "run 1 report")
        _write(folder / "checkpoint.pt", "run 1 checkpoint")
    return _files(folder)


# --- inputs are never overwritten -------------------------------------------------------------------------------


def test_an_output_that_is_an_input_is_refused_through_symlinks_and_hard_links(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "particles.star").write_text("input")
    out = tmp_path / "out"
    out.mkdir()
    (out / "particles.star").symlink_to(data / "particles.star")
    (out / "report.json").hardlink_to(data / "particles.star")
    for name in ("particles.star", "report.json"):
        with pytest.raises(InputError) as err:
            refuse_overwrite([out / name], [data / "particles.star"])
        assert str(err.value).startswith(f"{out / name}: an output would overwrite this input file "
                                          f"({data / 'particles.star'})")
    refuse_overwrite([out / "other.star"], [data / "particles.star"])  # nothing there: nothing overwritten

    # Up front when the folder is opened, and at every later write into it (a name not declared up front).
    with pytest.raises(InputError, match="an output would overwrite this input file"):
        with output_folder(out, inputs=[data / "particles.star"], outputs=["particles.star"]):
            pass
    with pytest.raises(InputError, match="an output would overwrite this input file"):
        with output_folder(out, inputs=[data / "particles.star"]):
            _write(out / "report.json", "new")
    assert (data / "particles.star").read_text() == "input"
    assert {p.name for p in out.iterdir()} == {"particles.star", "report.json"}  # nothing of ours left


# --- whole result sets ------------------------------------------------------------------------------------------


def test_a_failed_job_puts_the_earlier_results_back_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    with pytest.raises(RuntimeError, match="late failure"):
        with output_folder(out):
            _write(out / "checkpoint.pt", "run 2 checkpoint")  # resume state: kept
            _write(out / "particles.star", "run 2 particles")
            _write(out / "model.pt", "run 2 model")
            raise RuntimeError("late failure")
    assert _files(out) == {**before, "checkpoint.pt": "run 2 checkpoint"}


def test_a_successful_job_replaces_the_set_and_leaves_nothing_of_ours(tmp_path):
    out = tmp_path / "out"
    _earlier_run(out)
    with output_folder(out) as folder:
        _write(out / "particles.star", "run 2 particles")
        folder.remove("report.json")  # an earlier run's result this run does not make
    assert _files(out) == {"particles.star": "run 2 particles", "checkpoint.pt": "run 1 checkpoint"}


def test_a_failed_job_removes_the_folders_it_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(InputError):
        with output_folder(out):
            _write(out / "particles.star", "partial")
            raise InputError("a bad row found late", "particles.star", 7)
    assert list(tmp_path.iterdir()) == []


# --- one job per folder -----------------------------------------------------------------------------------------


HOLD = """
import sys, time
from relion_canon.io.output_dir import output_folder
with output_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_folder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder`` as its output folder (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_job_is_refused_naming_the_process_and_a_killed_ones_lock_does_not_block(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    holder = hold_folder(out)
    try:
        with pytest.raises(FolderBusy) as err:
            with output_folder(out):
                raise AssertionError("entered a folder another job holds")
        assert str(err.value) == (f"{out}: output folder in use by another relion_canon job (PID {holder.pid} on "
                                  f"{os.uname().nodename}); wait for it to end or choose another output folder")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).exists()  # what a SIGKILL leaves; the kernel has dropped the lock itself
    with output_folder(out):
        _write(out / "particles.star", "run 3 particles")
    assert _files(out) == {**before, "particles.star": "run 3 particles"}


KILLED_MID_JOB = """
import os, signal, sys
from pathlib import Path
from relion_canon.io.atomic import atomic_path
from relion_canon.io.output_dir import output_folder
out = Path(sys.argv[1])
with output_folder(out):
    for name in ("particles.star", "particles_selected.star"):
        with atomic_path(out / name) as tmp:
            tmp.write_text("run 2, never finished")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_job_killed_mid_write_is_reported_unfinished_then_undone_by_the_next(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_JOB, str(out)], env=_env())
    assert killed.returncode == -signal.SIGKILL
    assert (out / "particles_selected.star").exists()  # partial, and marked so:
    with pytest.raises(InputError, match="still running or was stopped before it finished"):
        check_finished(out)
    with output_folder(out) as folder:
        assert folder.recovered
        # The killed job's files gone, the earlier set back, before this job writes (its own lock aside).
        assert {k: v for k, v in _files(out).items() if k != LOCK_FILE} == before
    check_finished(out)
    assert _files(out) == before


# --- a full disk ------------------------------------------------------------------------------------------------


WRITE_BIG = """
import resource, signal, sys
from pathlib import Path
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.output_dir import output_folder
if len(sys.argv) > 2:  # a file-size limit: the write fails with EFBIG (SIGXFSZ ignored, as a shell can set it)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
out = Path(sys.argv[1]) / "out"
try:
    with output_folder(out):
        with atomic_path(out / "small.star") as tmp:
            tmp.write_text("fits")
        with atomic_path(out / "big.pt") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 400_000)
except InputError as exc:
    print(exc)
    sys.exit(2)
"""


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def in_tiny_tmpfs(mount: Path, size_kib: int, command: list[str]) -> list[str]:
    """``command`` in a private mount namespace where ``mount`` is a fresh tmpfs of ``size_kib``."""
    script = f'mount -t tmpfs -o size={size_kib}k tmpfs "$0" && exec "$@"'
    return ["unshare", "-Urm", "sh", "-c", script, str(mount), *command]


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(),
                    reason="needs a mount namespace (unshare -Urm) to mount a tiny tmpfs")
def test_a_full_disk_is_one_line_naming_the_device_and_the_file_and_leaves_nothing(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(in_tiny_tmpfs(mount, 128, [sys.executable, "-c", WRITE_BIG, str(mount)]),
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 2, res.stderr
    assert res.stdout.strip() == f"no space left on tmpfs (mounted at {mount}) while writing {mount / 'out' / 'big.pt'}"
    assert "Traceback" not in res.stderr
    assert list(mount.iterdir()) == []  # the tmpfs is gone with its namespace; nothing was written outside it


def test_the_file_size_limit_is_one_line_and_leaves_no_folder(tmp_path):
    res = subprocess.run([sys.executable, "-c", WRITE_BIG, str(tmp_path), "100000"], capture_output=True, text=True,
                         env=_env())
    assert res.returncode == 2, res.stderr
    line = res.stdout.strip()
    assert line.startswith("file too large for ") and line.endswith(
        f"(over the file size limit) while writing {tmp_path / 'out' / 'big.pt'}")
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # the folder the job made is gone with its one finished file
