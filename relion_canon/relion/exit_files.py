"""The files through which RELION and an External job tell each other how the job ends.

RELION decides that a job has finished only by polling for one of the ``RELION_JOB_EXIT_*`` files in the job
folder (the process exit code is ignored): a job that ends without one stays "Running" and
``relion_pipeliner --RunJobs`` waits for it forever. The GUI's "Abort running" (and ``relion_scheduler --abort``)
asks a job to stop by creating ``RELION_JOB_ABORT_NOW``. Names are the same in RELION 3.1, 4.0 and 5.0
(``src/pipeline_control.h``).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

EXIT_FILES = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)


class ExitStatus(enum.Enum):
    SUCCESS = EXIT_SUCCESS
    FAILURE = EXIT_FAILURE
    ABORTED = EXIT_ABORTED

    @property
    def return_code(self) -> int:
        """The process exit code that goes with the status (RELION ignores it; scripts may not)."""
        return {ExitStatus.SUCCESS: 0, ExitStatus.FAILURE: 1, ExitStatus.ABORTED: 2}[self]


def clear_stale_files(out_dir: str | os.PathLike) -> list[str]:
    """Remove exit files and the output-node list an earlier run of this job folder left behind.

    RELION does the same for the exit files before it launches a job; doing it here too keeps a job run by
    hand (or continued) from ending with two exit files. ``RELION_JOB_ABORT_NOW`` is left alone: RELION
    removes stale ones before launching, so one present now is a fresh request.
    """
    removed = []
    for name in (*EXIT_FILES, OUTPUT_NODES):
        path = Path(out_dir) / name
        try:
            path.unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def abort_requested(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / ABORT_NOW).exists()


def write_exit_file(out_dir: str | os.PathLike, status: ExitStatus) -> Path:
    """End the job for RELION: remove the abort request if any, then create the one exit file.

    The exit file comes last, after every output and ``RELION_OUTPUT_NODES.star``: RELION reads the node list
    once, when it first sees SUCCESS, and the GUI may poll at any moment.
    """
    out = Path(out_dir)
    if status is ExitStatus.ABORTED:
        # The abort protocol: the job that honoured the request removes it.
        (out / ABORT_NOW).unlink(missing_ok=True)
    for other in EXIT_FILES:
        if other != status.value:
            (out / other).unlink(missing_ok=True)
    path = out / status.value
    # Opening with O_CREAT is one system call: the file appears complete (RELION only checks that it exists).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.close(fd)
    return path
