"""cryoSPARC front door: run the job on a cryoSPARC project's particles as an External job (cryosparc-tools).

The file route (a ``.cs`` in, ``.cs`` + ``.csg`` out for "Import Result Group") needs no server and lives in
:mod:`relion_canon.io.cryosparc_files` / :mod:`relion_canon.io.particles`; this package is for a reachable server.
cryosparc-tools is imported only when a server is contacted.
"""

from relion_canon.cryosparc.job import (
    CryosparcJobResult,
    check_versions,
    connect,
    parse_input_ref,
    run_external_job,
)

__all__ = ["CryosparcJobResult", "check_versions", "connect", "parse_input_ref", "run_external_job"]
