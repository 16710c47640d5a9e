"""The field layout of cryoSPARC particle tables: which fields we read and write, their dtypes, neutral values.

A ``.cs`` table's columns are named ``slot/field``; a slot (``blob``, ``ctf``, ``alignments2D``, ...) is one kind
of per-particle result. Our own estimates live in a slot of their own, :data:`CANON_SLOT`; cryoSPARC keeps it in
the file but no cryoSPARC job reads it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

UID_COLUMN = "rlnCanonUid"
CANON_SLOT = "relion_canon"

# Our per-particle results in a .cs: field -> (STAR column, dtype). Angles in radians as in alignments2D/pose
# (in [0, 2π), but tilt in [0, π]), defocus in Å, weight and outlier score as in the STAR, the outlier flag 0/1.
CANON_FIELDS: dict[str, tuple[str, str]] = {
    f"{CANON_SLOT}/pose": ("rlnAnglePsi", "<f4"),
    f"{CANON_SLOT}/pose_prior": ("rlnAnglePsiPrior", "<f4"),
    f"{CANON_SLOT}/class_pose": ("rlnCanonClassPsi", "<f4"),
    f"{CANON_SLOT}/rot_prior": ("rlnAngleRotPrior", "<f4"),
    f"{CANON_SLOT}/tilt_prior": ("rlnAngleTiltPrior", "<f4"),
    f"{CANON_SLOT}/defocus_A": ("rlnCanonDefocus", "<f4"),
    f"{CANON_SLOT}/weight": ("rlnParticleFigureOfMerit", "<f4"),
    f"{CANON_SLOT}/outlier_score": ("rlnParticleSelectZScore", "<f4"),
    f"{CANON_SLOT}/is_outlier": ("rlnCanonIsOutlier", "<u4"),
}
CANON_ANGLE_FIELDS = {f"{CANON_SLOT}/{f}" for f in ("pose", "pose_prior", "class_pose", "rot_prior", "tilt_prior")}
CANON_TILT_FIELDS = {f"{CANON_SLOT}/tilt_prior"}  # in [0, π]: not wrapped, or 180° would come back as −180°
PRIOR_COLUMNS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
# cryoSPARC has no null value, so RELION's "no prior" (999) cannot go into a radian field: a particle without
# one has 0 there and 0 in this flag (1: its prior fields hold its priors). With a reference map those are the
# particles without a 3-D orientation, whose alignments3D/pose is zero (star_to_cs.posed_rows).
PRIOR_FLAG = f"{CANON_SLOT}/has_prior"

# Whole slots as cryoSPARC writes them (dtypes dumped from the real fixtures), for files we create.
BLOB_FIELDS = [("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("blob/sign", "<f4")]
CTF_FIELDS = [
    ("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
    ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)),
    ("ctf/tilt_A", "<f4", (2,)), ("ctf/trefoil_A", "<f4", (2,)), ("ctf/tetra_A", "<f4", (4,)),
    ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4"),
]
_SCORES = ["error", "error_min", "resid_pow", "slice_pow", "image_pow", "cross_cor", "alpha"]
_ESS = ["weight", "pose_ess", "shift_ess", "class_posterior"]
ALIGNMENTS2D_FIELDS = (
    [("alignments2D/split", "<u4"), ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"),
     ("alignments2D/psize_A", "<f4")]
    + [(f"alignments2D/{f}", "<f4") for f in _SCORES + ["alpha_min"] + _ESS]
    + [("alignments2D/class", "<u4"), ("alignments2D/class_ess", "<f4")]
)
ALIGNMENTS3D_FIELDS = (
    [("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
     ("alignments3D/psize_A", "<f4")]
    + [(f"alignments3D/{f}", "<f4") for f in _SCORES + _ESS]
    + [("alignments3D/class", "<u4"), ("alignments3D/class_ess", "<f4")]
)
# Neutral values for fields we create but have nothing to put in (a fresh slot is one class, certain, unscaled).
NEUTRAL_VALUES = {"ctf/scale": 1.0, "blob/sign": -1.0, "alignments2D/alpha": 1.0,
                  "alignments2D/class_posterior": 1.0, "alignments3D/alpha": 1.0,
                  "alignments3D/class_posterior": 1.0}


def field_list(dtype: np.dtype) -> list[tuple[str, np.dtype]]:
    """A structured dtype as its ``(name, dtype)`` list, to extend with more fields."""
    return [(name, dtype[name]) for name in dtype.names]


def field_names(table: Any) -> Sequence[str]:
    """The field names of a record array or of a cryosparc-tools ``Dataset``."""
    return table.dtype.names if hasattr(table, "dtype") else table.fields()


def allocate(n: int, fields: Sequence[tuple]) -> np.ndarray:
    """``n`` zeroed rows of ``fields``, with :data:`NEUTRAL_VALUES` where those fields are present."""
    out = np.zeros(n, dtype=list(fields))
    for name, value in NEUTRAL_VALUES.items():
        if name in out.dtype.names:
            out[name] = value
    return out


def with_fields(records: np.ndarray, fields: Sequence[tuple]) -> np.ndarray:
    """``records`` with any of ``fields`` it lacks appended (neutral values); existing fields are kept as they are."""
    new = [f for f in fields if f[0] not in records.dtype.names]
    if not new:
        return records.copy()
    out = allocate(len(records), field_list(records.dtype) + list(new))
    for name in records.dtype.names:
        out[name] = records[name]
    return out
