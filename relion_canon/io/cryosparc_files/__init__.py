"""cryoSPARC file formats: particle ``.cs`` files <-> RELION particle tables, and ``.csg`` result groups.

* :mod:`.format` reads and writes ``.cs`` files (NUMPY and CSDAT formats) as plain record arrays;
* :mod:`.layout` says which fields a cryoSPARC particle table has, with their dtypes, and which are ours;
* :mod:`.join` joins tables on the particle ``uid`` (a ``.cs`` with its passthrough, results with their input);
* :mod:`.poses` converts cryoSPARC poses to RELION angles and back;
* :mod:`.cs_to_star` and :mod:`.star_to_cs` convert whole tables, one way each;
* :mod:`.csg` writes the ``.csg`` that cryoSPARC's "Import Result Group" job reads.

(Not to be confused with :mod:`relion_canon.cryosparc`, which runs the job on a cryoSPARC server.)
"""

from relion_canon.io.cryosparc_files.cs_to_star import locate_stack, read_cs, records_to_star, strip_export_prefix
from relion_canon.io.cryosparc_files.csg import csg_text, slot_types, write_csg
from relion_canon.io.cryosparc_files.format import (
    CSDAT_MAGIC,
    INSTALL_HINT,
    NUMPY_MAGIC,
    as_records,
    cryosparc_tools_version,
    load_cs,
    save_cs,
)
from relion_canon.io.cryosparc_files.join import join_passthrough, read_cs_records, result_positions, star_uids
from relion_canon.io.cryosparc_files.layout import (
    ALIGNMENTS2D_FIELDS,
    ALIGNMENTS3D_FIELDS,
    BLOB_FIELDS,
    CANON_FIELDS,
    CANON_SLOT,
    CTF_FIELDS,
    PRIOR_FLAG,
    UID_COLUMN,
)
from relion_canon.io.cryosparc_files.poses import euler_to_pose3d, pose2d_to_psi, pose3d_to_euler, psi_to_pose2d
from relion_canon.io.cryosparc_files.star_to_cs import (
    CLASS_PSI_COLUMN,
    fill_alignments2d,
    fill_alignments3d,
    in_plane_psi,
    posed_rows,
    results_to_records,
    set_canon_fields,
    star_to_records,
)

__all__ = [
    "ALIGNMENTS2D_FIELDS",
    "ALIGNMENTS3D_FIELDS",
    "BLOB_FIELDS",
    "CANON_FIELDS",
    "CANON_SLOT",
    "CLASS_PSI_COLUMN",
    "CSDAT_MAGIC",
    "CTF_FIELDS",
    "INSTALL_HINT",
    "NUMPY_MAGIC",
    "PRIOR_FLAG",
    "UID_COLUMN",
    "as_records",
    "cryosparc_tools_version",
    "csg_text",
    "euler_to_pose3d",
    "fill_alignments2d",
    "fill_alignments3d",
    "in_plane_psi",
    "join_passthrough",
    "load_cs",
    "locate_stack",
    "pose2d_to_psi",
    "pose3d_to_euler",
    "posed_rows",
    "psi_to_pose2d",
    "read_cs",
    "read_cs_records",
    "records_to_star",
    "result_positions",
    "results_to_records",
    "save_cs",
    "set_canon_fields",
    "slot_types",
    "star_to_records",
    "star_uids",
    "strip_export_prefix",
    "write_csg",
]
