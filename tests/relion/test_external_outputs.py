"""relion_canon_external and its job folder: its own output never taken as input, one job per folder, and on
failure RELION_JOB_EXIT_FAILURE with the earlier results put back, never a partial set."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.star import read_star, write_star
from relion_canon.relion.external import ExternalJob, main
from tests.io.test_output_dir import hold_folder

OUT = "External/job001/"
EXIT_FILES = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _earlier_results(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    star = read_star("Input/particles.star")
    write_star(star, out / "particles.star")
    write_star(star, out / "particles_selected.star")
    (out / "logfile.pdf").write_bytes(b"%PDF-1.4 earlier run\n")
    return _snapshot(out)


def test_its_own_particles_as_input_is_refused_before_any_work(project, capsys):
    out = project / OUT
    before = _earlier_results(out)
    rc = main(["--o", OUT, "--in_parts", f"{OUT}particles.star", "--j", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [
        f"relion_canon_external: error: {OUT}particles.star: an output would overwrite this input file, and "
        "inputs are never modified: choose another output folder"]
    after = _snapshot(out)
    assert after.pop("RELION_JOB_EXIT_FAILURE") == b""
    assert after == before


def test_a_folder_another_job_holds_is_refused_and_left_alone(project, capsys):
    out = project / OUT
    before = _earlier_results(out)
    holder = hold_folder(out)
    try:
        rc = main(["--o", OUT, "--in_parts", "Input/particles.star", "--j", "1"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [
        f"relion_canon_external: error: {OUT.rstrip('/')}: output folder in use by another relion_canon job "
        f"(PID {holder.pid} on {os.uname().nodename}); wait for it to end or choose another output folder"]
    # No exit file either: the folder, and the exit file RELION waits for, are the running job's.
    assert {k: v for k, v in _snapshot(out).items() if k != ".relion_canon.lock"} == before


def _fails_after_writing(star, out_dir, config, *, resume, context, input_checked=False):
    """Writes results as the job does (through the atomic writers), then finds a bad row, as a late check would."""
    out = Path(out_dir)
    n = len(star)
    write_star(star.with_columns({"rlnAnglePsi": np.zeros(n)}), out / "particles.star")
    write_star(star.with_columns({"rlnAnglePsi": np.zeros(n)}), out / "report.json")
    raise InputError("a defocus no job could use", star.path, 3)


def test_a_late_failure_puts_the_earlier_results_back_and_writes_only_the_failure_file(project, capsys):
    out = project / OUT
    before = _earlier_results(out)
    rc = ExternalJob(OUT, job=_fails_after_writing).run(["--o", OUT, "--in_parts", "Input/particles.star"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        "relion_canon_external: error: Input/particles.star, row 3: a defocus no job could use")
    after = _snapshot(out)
    assert after.pop("RELION_JOB_EXIT_FAILURE") == b""
    assert after == before  # report.json gone, particles.star the earlier one, nothing of ours left
