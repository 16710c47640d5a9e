"""torchrun: the External job's launcher for several GPUs runs its command on the GPUs given, reports a failure
with the exit code, and on RELION's abort request stops the whole process tree (torchrun and its workers).
Real child processes stand in for torchrun here; tests/relion/test_external_distributed.py runs torchrun itself."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import pytest

from relion_canon.relion.torchrun import run_torchrun

# A parent that starts a worker of its own, as torchrun does, writes the worker's PID and waits for it.
TREE = ("import subprocess, sys, time, pathlib; "
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "pathlib.Path(sys.argv[1]).write_text(str(w.pid)); w.wait()")


def _alive(pid: int) -> bool:
    """Running: a zombie (dead, waiting to be reaped by a PID 1 that may never reap it) does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def test_finished_command_sees_only_the_gpus_given(tmp_path):
    seen = tmp_path / "seen"
    code = f"import os, pathlib; pathlib.Path({str(seen)!r}).write_text(os.environ['CUDA_VISIBLE_DEVICES'])"
    assert run_torchrun([sys.executable, "-c", code], ["2", "3"], lambda: False) is True
    assert seen.read_text() == "2,3"


def test_failure_names_the_exit_code():
    with pytest.raises(RuntimeError, match=r"the torchrun processes exited with code 3 \(their messages are above"):
        run_torchrun([sys.executable, "-c", "raise SystemExit(3)"], ["0", "1"], lambda: False)


def test_stop_request_ends_the_whole_tree(tmp_path):
    pid_file = tmp_path / "worker.pid"

    def should_stop() -> bool:
        return pid_file.exists() and pid_file.read_text() != ""  # once the worker runs

    t0 = time.monotonic()
    assert run_torchrun([sys.executable, "-c", TREE, str(pid_file)], ["0", "1"], should_stop) is False
    assert time.monotonic() - t0 < 60
    worker = int(Path(pid_file).read_text())
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)  # the orphaned worker is reaped by init shortly after its SIGTERM
    assert not _alive(worker)
