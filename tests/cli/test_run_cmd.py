"""`relion-canon run`, `train` and `predict` and their output: never over an input, one job per folder, the
whole result set or none (a late failure, a full disk), each case through the real command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.io.output_dir import JOURNAL_FILE, LOCK_FILE, PREVIOUS_DIR
from tests.io.test_output_dir import _can_mount_tmpfs, hold_folder, in_tiny_tmpfs

REPO = Path(__file__).resolve().parents[2]
SIM_TINY = REPO / "test_data" / "sim_tiny"
FAST = ["--epochs", "1", "--j", "1", "--quiet", "--set", "width=8", "--set", "max_width=16"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    """A private copy of sim_tiny (24 particles, 32 px): D/particles.star and its stack."""
    d = tmp_path / "D"
    d.mkdir()
    for name in ("particles.star", "particles.mrcs"):
        shutil.copy(SIM_TINY / name, d / name)
    text = (d / "particles.star").read_text().replace("test_data/sim_tiny/particles.mrcs", "particles.mrcs")
    (d / "particles.star").write_text(text)
    return d


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished job's folder (on sim_tiny), to copy."""
    root = tmp_path_factory.mktemp("finished")
    out = root / "job"
    res = CliRunner().invoke(cli, ["run", "--i", str(SIM_TINY / "particles.star"), "--o", str(out), *FAST])
    assert res.exit_code == 0, res.output
    return out


# --- inputs are never modified ----------------------------------------------------------------------------------


def test_run_into_the_folder_of_its_input_is_refused_before_any_work(data):
    before = _snapshot(data.parent)
    res = CliRunner().invoke(cli, ["run", "--i", str(data / "particles.star"), "--o", str(data), *FAST])
    assert res.exit_code == 2
    assert _one_line(res.stderr) == (f"relion-canon: error: {data / 'particles.star'}: an output would overwrite "
                                     "this input file, and inputs are never modified: choose another output folder")
    assert "Training" not in res.stdout
    assert _snapshot(data.parent) == before


def test_run_refuses_an_output_name_that_is_a_symlink_to_its_input(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "particles_selected.star").symlink_to(data / "particles.star")
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(cli, ["run", "--i", str(data / "particles.star"), "--o", str(out), *FAST])
    assert res.exit_code == 2
    assert _one_line(res.stderr).startswith(f"relion-canon: error: {out / 'particles_selected.star'}: an output "
                                            f"would overwrite this input file ({data / 'particles.star'})")
    assert _snapshot(tmp_path) == before and (out / "particles_selected.star").is_symlink()


@pytest.mark.parametrize("target", ["particles.star", "link.star", "particles.mrcs", "model.pt"])
def test_predict_onto_an_input_is_refused(finished, data, target):
    (data / "link.star").symlink_to(data / "particles.star")
    shutil.copy(finished / "model.pt", data / "model.pt")
    before = _snapshot(data)
    res = CliRunner().invoke(cli, ["predict", "--i", str(data / "particles.star"), "--model", str(data / "model.pt"),
                                   "--o", str(data / target), "--j", "1", "--quiet"])
    assert res.exit_code == 2
    assert _one_line(res.stderr).startswith(f"relion-canon: error: {data / target}: an output would overwrite this "
                                            "input file")
    assert res.stderr.strip().endswith("choose another output file (--o)")
    assert _snapshot(data) == before


# --- one job per folder -----------------------------------------------------------------------------------------


def test_a_second_job_into_a_folder_in_use_is_refused_naming_the_process(data, tmp_path):
    out = tmp_path / "out"
    holder = hold_folder(out)
    try:
        before = _snapshot(tmp_path)
        for command in (["run", "--i", str(data / "particles.star"), "--o", str(out), *FAST],
                        ["train", "--i", str(data / "particles.star"), "--o", str(out), "--epochs", "1", "--quiet"]):
            res = CliRunner().invoke(cli, command)
            assert res.exit_code == 2
            assert _one_line(res.stderr) == (
                f"relion-canon: error: {out}: output folder in use by another relion_canon job (PID {holder.pid} on "
                f"{os.uname().nodename}); wait for it to end or choose another output folder")
            assert _snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# --- whole result sets or none ----------------------------------------------------------------------------------


def _rerun_failing_late(finished: Path, work: Path, limit: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the job again into a copy of a finished folder, applying its model, under ``limit`` (a prefix that
    makes writing the figures fail: they are written after particles*.star)."""
    out = work / "job"
    shutil.copytree(finished, out)
    command = [sys.executable, "-m", "relion_canon.cli.main", "run", "--i", str(SIM_TINY / "particles.star"),
               "--o", str(out), "--model-path", str(out / "model.pt"), "--seed", "5", "--j", "1", "--quiet"]
    return subprocess.run([*limit, *command], capture_output=True, text=True, env=_env()), out


FSIZE_LIMIT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_failure_after_the_particles_are_written_leaves_the_earlier_result_set_whole(finished, tmp_path):
    # particles*.star (8 kB) fit under a 60 kB file-size limit; the first figure (100 kB) does not.
    res, out = _rerun_failing_late(finished, tmp_path, [sys.executable, "-c", FSIZE_LIMIT])
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert line.startswith("relion-canon: error: file too large for ") and f"while writing {out}/" in line
    assert _snapshot(out) == _snapshot(finished)  # every file of the earlier set as it was, nothing added


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(),
                    reason="needs a mount namespace (unshare -Urm) to mount a tiny tmpfs")
def test_a_full_disk_late_in_the_job_is_one_line_and_leaves_the_earlier_result_set_whole(finished, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kib = sum(p.stat().st_size for p in finished.iterdir()) // 1024 + 64  # the set, and 64 kB to spare
    command = [sys.executable, "-m", "relion_canon.cli.main", "run", "--i", str(SIM_TINY / "particles.star"),
               "--o", str(disk / "job"), "--model-path", str(disk / "job" / "model.pt"), "--seed", "5", "--j", "1",
               "--quiet"]
    # In the namespace: copy the finished set onto the tiny disk, run, and compare the folder before and after.
    script = ('d="$1"; shift; cp -a "$0" "$d/job" && cd "$d/job" && before=$(ls -A | sort | xargs sha1sum) && '
              '"$@"; rc=$?; echo "rc=$rc"; after=$(ls -A | sort | xargs sha1sum); '
              '[ "$before" = "$after" ] && echo "unchanged"; exit $rc')
    res = subprocess.run(in_tiny_tmpfs(disk, size_kib, ["sh", "-c", script, str(finished), str(disk), *command]),
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert line.startswith(f"relion-canon: error: no space left on tmpfs (mounted at {disk}) while writing {disk}/job/")
    assert "rc=2" in res.stdout and "unchanged" in res.stdout  # the earlier set byte for byte, nothing added


def test_a_failed_run_leaves_no_folder_it_created(tmp_path):
    # Under a 100 kB file-size limit the first checkpoint (about 1 MB) cannot be written: the job fails in training.
    out = tmp_path / "new" / "job"
    command = [sys.executable, "-m", "relion_canon.cli.main", "run", "--i", str(SIM_TINY / "particles.star"),
               "--o", str(out), *FAST]
    limit = FSIZE_LIMIT.replace("60_000", "100_000")
    res = subprocess.run([sys.executable, "-c", limit, *command], capture_output=True, text=True, env=_env())
    assert res.returncode == 2, res.stderr
    assert _one_line(res.stderr).endswith(f"(over the file size limit) while writing {out / 'checkpoint.pt'}")
    assert list(tmp_path.iterdir()) == []


def test_a_finished_folder_holds_only_results(finished):
    names = {p.name for p in finished.iterdir()}
    assert not names & {LOCK_FILE, JOURNAL_FILE, PREVIOUS_DIR}
    assert {"particles.star", "report.json", "model.pt", "checkpoint.pt"} <= names


def test_evaluate_refuses_the_folder_of_a_job_killed_mid_write(finished, tmp_path):
    from tests.io.test_output_dir import KILLED_MID_JOB

    out = tmp_path / "job"
    shutil.copytree(finished, out)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_JOB, str(out)], env=_env())
    assert killed.returncode == -signal.SIGKILL
    res = CliRunner().invoke(cli, ["evaluate", "--i", str(out), "--truth", str(SIM_TINY), "--o", str(tmp_path / "e")])
    assert res.exit_code == 2
    assert _one_line(res.stderr) == (
        f"relion-canon: error: {out}: the job writing this folder is still running or was stopped before it "
        f"finished ({JOURNAL_FILE} is there): its results are incomplete; run the job again to finish it")
    assert not (tmp_path / "e").exists()
