"""RELION's External job protocol: the ``relion_canon_external`` executable and the files it exchanges with RELION.

* :mod:`~relion_canon.relion.exit_files`: the exit-status files RELION polls, and the abort request;
* :mod:`~relion_canon.relion.job_star`: the ``job.star`` RELION writes before launching (version, continue flag);
* :mod:`~relion_canon.relion.nodes`: ``RELION_OUTPUT_NODES.star`` with the node types of each RELION version;
* :mod:`~relion_canon.relion.external`: the executable itself (arguments as RELION passes them → the job).

Nothing here imports torch: the protocol parts stay cheap to import and to test.
"""

from relion_canon.relion.exit_files import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    ExitStatus,
    abort_requested,
    clear_stale_files,
    write_exit_file,
)
from relion_canon.relion.job_star import JobStar, detect_relion_version, read_job_star
from relion_canon.relion.nodes import NodeKind, node_type_label, write_output_nodes

__all__ = [
    "ABORT_NOW",
    "EXIT_ABORTED",
    "EXIT_FAILURE",
    "EXIT_SUCCESS",
    "ExitStatus",
    "JobStar",
    "NodeKind",
    "abort_requested",
    "clear_stale_files",
    "detect_relion_version",
    "node_type_label",
    "read_job_star",
    "write_exit_file",
    "write_output_nodes",
]
