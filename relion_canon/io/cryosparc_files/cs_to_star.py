"""cryoSPARC particle records -> an in-memory RELION 3.1 particle table (:class:`ParticleStar`).

Conventions (docs/cryosparc.md §3, checked against the real fixtures in the tests):

* ``rlnImageName = f"{blob/idx + 1:06d}@{blob/path}"`` with a leading ``>`` (exported files) removed;
* ``rlnDefocusU/V = ctf/df1_A, df2_A``; ``rlnDefocusAngle = deg(ctf/df_angle_rad)``; ``rlnPhaseShift = deg(...)``;
* ``rlnImagePixelSize = blob/psize_A``, ``rlnImageSize = blob/shape[0]``, one optics group per cryoSPARC
  exposure group (``ctf/exp_group_id``) and set of optics values;
* ``rlnAngleRot/Tilt/Psi`` = intrinsic ZYZ Euler angles of the rotation vector ``alignments3D/pose``;
  ``rlnAnglePsi = deg(alignments2D/pose)`` wrapped to [−180, 180) when there is no 3D pose;
* ``rlnOriginX/YAngst = alignments*/shift × alignments*/psize_A`` (same sign);
* ``rlnClassNumber = class + 1``, ``rlnRandomSubset = split + 1``; ``rlnCanonUid = uid`` (to join results back);
* our own estimates (:data:`~relion_canon.io.cryosparc_files.layout.CANON_FIELDS`) under their RELION names;
  where ``relion_canon/has_prior`` is 0 the prior columns are RELION's "no prior" (999) and, the 3-D pose of
  such a particle being zero, ``rlnAnglePsi`` is the in-plane angle in ``relion_canon/pose``, as the job wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.cryosparc_files.join import read_cs_records
from relion_canon.io.cryosparc_files.layout import (
    CANON_ANGLE_FIELDS,
    CANON_FIELDS,
    CANON_TILT_FIELDS,
    PRIOR_COLUMNS,
    PRIOR_FLAG,
    UID_COLUMN,
)
from relion_canon.io.cryosparc_files.poses import pose2d_to_psi, pose3d_to_euler
from relion_canon.io.imagename import format_image_name, resolve_path
from relion_canon.io.star import NO_PRIOR, VERSION_31, ParticleStar

_JOB_DIR_RE = re.compile(r"^J\d+$")

# STAR optics column -> the .cs field it comes from (all but the image size, which is blob/shape[0]).
_OPTICS_FIELDS = {
    "rlnAmplitudeContrast": "ctf/amp_contrast",
    "rlnSphericalAberration": "ctf/cs_mm",
    "rlnVoltage": "ctf/accel_kv",
    "rlnImagePixelSize": "blob/psize_A",
}


def read_cs(path: str | Path, passthrough: str | Path | None = None, project_dir: str | Path | None = None,
            require_stacks: bool = False) -> ParticleStar:
    """A cryoSPARC particles ``.cs`` (+ passthrough) as an in-memory RELION 3.1 particle table.

    ``project_dir`` is the cryoSPARC project directory that ``blob/path`` is relative to; the image names then
    point into it, so :meth:`ParticleSource.from_star` finds the stacks with no further arguments. Without it
    a stack is looked for where RELION would (the working directory), beside the ``.cs`` and in the project
    folder around a ``J<n>`` job folder. ``require_stacks`` raises for a stack that is found nowhere.
    """
    records = read_cs_records(path, passthrough)
    return records_to_star(records, path, project_dir=project_dir, require_stacks=require_stacks)


def records_to_star(records: np.ndarray, origin: str | Path, project_dir: str | Path | None = None,
                    require_stacks: bool = False) -> ParticleStar:
    """Convert joined ``.cs`` records to a RELION 3.1 :class:`ParticleStar` (see the module docstring)."""
    origin = Path(origin)
    columns: dict[str, Any] = {"rlnImageName": _image_names(records, origin, project_dir, require_stacks)}
    columns.update(_micrograph_columns(records))
    optics, group = _optics_table(records)
    columns["rlnOpticsGroup"] = group
    columns.update(_ctf_columns(records))
    alignment = _alignment_columns(records)
    columns.update(alignment)
    columns[UID_COLUMN] = records["uid"].astype(np.uint64)
    canon = _canon_columns(records)
    if "rlnAngleRot" in alignment and "rlnAnglePsi" in canon and PRIOR_FLAG in records.dtype.names:
        # The job's own 3-D poses: psi goes with rot and tilt (at tilt 0 they share it); a particle without
        # a 3-D pose has the zero pose, and its psi is ours.
        canon["rlnAnglePsi"] = np.where(records[PRIOR_FLAG] > 0, alignment["rlnAnglePsi"], canon["rlnAnglePsi"])
    columns.update(canon)
    particles = pd.DataFrame({k: (v if isinstance(v, list) else np.asarray(v)) for k, v in columns.items()})
    return ParticleStar(origin, {"optics": optics, "particles": particles}, "particles", VERSION_31)


# --- values ---------------------------------------------------------------------------------------------------------


def _strings(values: np.ndarray) -> np.ndarray:
    """Byte or object strings as a ``str`` object array."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace").astype(object)
    return values.astype(str).astype(object)


def _f8(values: np.ndarray) -> np.ndarray:
    """float32 values as the doubles their shortest text means (15301.1 stays 15301.1, not 15301.099609375)."""
    values = np.asarray(values)
    if values.dtype == np.float32:
        return values.astype(str).astype(np.float64)
    return values.astype(np.float64)


def _degrees_f4(radians: np.ndarray) -> np.ndarray:
    """Stored float32 radians as degrees with the precision they have (5.28, not 5.280000044476548)."""
    return _f8(np.rad2deg(radians.astype(np.float64)).astype(np.float32))


# --- image names ----------------------------------------------------------------------------------------------------


def strip_export_prefix(path: str) -> str:
    """``>J1/imported/x.mrcs`` (exported files) -> ``J1/imported/x.mrcs``."""
    return path[1:] if path.startswith(">") else path


def locate_stack(blob_path: str, cs_path: str | Path, project_dir: str | Path | None = None) -> Path | None:
    """Where the stack named by one ``blob/path`` is on this machine, or None.

    With ``project_dir`` only the project is searched (it is what the path is relative to). Otherwise: the
    working directory (RELION's project), the ``.cs`` file's folder (exports, whose paths start with ``>``),
    the file name beside the ``.cs``, and the project folder around a ``J<n>`` job folder holding the ``.cs``.
    """
    p = Path(strip_export_prefix(blob_path))
    if project_dir is not None:
        c = p if p.is_absolute() else Path(project_dir) / p
        return c if c.is_file() else None
    cs_dir = Path(cs_path).parent
    job_parent = cs_dir.parent if _JOB_DIR_RE.match(cs_dir.resolve().name) else None
    return resolve_path(str(p), cs_dir, None, job_parent)


def _stack_name(blob_path: str, origin: Path, project_dir: str | Path | None, require_stacks: bool,
                row: int) -> str:
    """The stack name for ``rlnImageName`` of one ``blob/path``; InputError (at ``row``) when not found but needed."""
    path = strip_export_prefix(blob_path)
    found = locate_stack(blob_path, origin, project_dir)
    if found is None and (require_stacks or project_dir is not None):
        where = (f"in the project directory {project_dir}" if project_dir is not None else
                 "in the working directory, beside the .cs or in its project folder (give --project-dir)")
        raise InputError(f"stack {path} (blob/path) not found {where}", origin, row)
    if project_dir is not None and not Path(path).is_absolute():
        # Absolute, so that it resolves whatever directory a reader later runs in.
        return str(Path(project_dir).resolve() / path)
    return str(found) if found is not None else path


def _image_names(records: np.ndarray, origin: Path, project_dir: str | Path | None,
                 require_stacks: bool) -> list[str]:
    """``rlnImageName`` of every particle, with one stack lookup per stack, not per particle."""
    paths, first, inverse = np.unique(records["blob/path"], return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    stack_names: list[str] = [""] * len(paths)
    raws = _strings(paths)
    for k in np.argsort(first, kind="stable"):  # in file order, so an error names the first row affected
        stack_names[k] = _stack_name(raws[k], origin, project_dir, require_stacks, int(first[k]) + 1)
    idx = records["blob/idx"].astype(np.int64)
    return [format_image_name(i, stack_names[k]) for i, k in zip(idx.tolist(), inverse.tolist())]


def _micrograph_columns(records: np.ndarray) -> dict[str, Any]:
    if "location/micrograph_path" not in records.dtype.names:
        return {}
    return {"rlnMicrographName": [strip_export_prefix(s) for s in _strings(records["location/micrograph_path"])]}


# --- optics and CTF -------------------------------------------------------------------------------------------------


def _optics_table(records: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """One optics group per exposure group and set of optics values; groups numbered 1..K as RELION needs."""
    has = set(records.dtype.names).__contains__
    n = len(records)
    exp = records["ctf/exp_group_id"].astype(np.int64) if has("ctf/exp_group_id") else np.zeros(n, np.int64)
    present = {label: _f8(records[field]) for label, field in _OPTICS_FIELDS.items() if has(field)}
    if has("blob/shape"):
        present["rlnImageSize"] = records["blob/shape"][:, 0].astype(np.int64)
    labels = list(present)
    key = np.column_stack([exp.astype(np.float64)] + [present[label].astype(np.float64) for label in labels])
    groups, group_of = np.unique(key, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    exp_of_group = groups[:, 0].astype(np.int64)
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, len(groups) + 1),
                           "rlnOpticsGroupName": _optics_group_names(exp_of_group)})
    for j, label in enumerate(labels):
        optics[label] = groups[:, j + 1].astype(np.int64) if label == "rlnImageSize" else groups[:, j + 1]
    if "rlnImageSize" in optics.columns:
        optics["rlnImageDimensionality"] = 2
    return optics, group_of.astype(np.int64) + 1


def _optics_group_names(exp_of_group: np.ndarray) -> list[str]:
    """``exp_group_<id>``, numbered ``_<group>`` where one exposure group spans several optics groups."""
    names = []
    for g, e in enumerate(exp_of_group):
        shared = (exp_of_group == e).sum() > 1
        names.append(f"exp_group_{e}" + (f"_{g + 1}" if shared else ""))
    return names


def _ctf_columns(records: np.ndarray) -> dict[str, Any]:
    has = set(records.dtype.names).__contains__
    if not has("ctf/df1_A"):
        return {}
    columns: dict[str, Any] = {"rlnDefocusU": _f8(records["ctf/df1_A"])}
    columns["rlnDefocusV"] = _f8(records["ctf/df2_A"]) if has("ctf/df2_A") else columns["rlnDefocusU"]
    if has("ctf/df_angle_rad"):
        columns["rlnDefocusAngle"] = _degrees_f4(records["ctf/df_angle_rad"])
    if has("ctf/phase_shift_rad"):
        columns["rlnPhaseShift"] = _degrees_f4(records["ctf/phase_shift_rad"])
    if has("ctf/bfactor"):
        columns["rlnCtfBfactor"] = _f8(records["ctf/bfactor"])
    if has("ctf/scale"):
        columns["rlnCtfScalefactor"] = _f8(records["ctf/scale"])
    return columns


# --- alignments and our own fields ----------------------------------------------------------------------------------


def _alignment_columns(records: np.ndarray) -> dict[str, Any]:
    """Angles, origins, class and half-set from ``alignments3D``, else from ``alignments2D``, else none."""
    has = set(records.dtype.names).__contains__
    slot = "alignments3D" if has("alignments3D/pose") else "alignments2D" if has("alignments2D/pose") else None
    if slot is None:
        return {}
    columns: dict[str, Any] = {}
    pose = records[f"{slot}/pose"].astype(np.float64)
    if slot == "alignments3D":
        columns["rlnAngleRot"], columns["rlnAngleTilt"], columns["rlnAnglePsi"] = pose3d_to_euler(pose).T
    else:
        columns["rlnAnglePsi"] = pose2d_to_psi(pose)
    psize_field = next((f for f in (f"{slot}/psize_A", "blob/psize_A") if has(f)), None)
    if has(f"{slot}/shift") and psize_field is not None:
        origin_a = records[f"{slot}/shift"].astype(np.float64) * _f8(records[psize_field])[:, None]
        columns["rlnOriginXAngst"], columns["rlnOriginYAngst"] = origin_a.T
    if has(f"{slot}/class"):
        columns["rlnClassNumber"] = records[f"{slot}/class"].astype(np.int64) + 1
    if has(f"{slot}/split"):
        split = records[f"{slot}/split"].astype(np.int64)
        if np.unique(split).size > 1:  # all in one half is no half-set assignment (pyem drops it too)
            columns["rlnRandomSubset"] = split + 1
    return columns


def _canon_columns(records: np.ndarray) -> dict[str, Any]:
    """Our own estimates, back under their RELION column names."""
    columns: dict[str, Any] = {}
    for field, (column, _) in CANON_FIELDS.items():
        if field not in records.dtype.names:
            continue
        values = records[field]
        if field in CANON_TILT_FIELDS:
            columns[column] = np.rad2deg(values.astype(np.float64))
        elif field in CANON_ANGLE_FIELDS:
            columns[column] = pose2d_to_psi(values.astype(np.float64))
        else:
            columns[column] = values.astype(np.int64) if values.dtype.kind in "iu" else _f8(values)
    if PRIOR_FLAG in records.dtype.names:
        missing = records[PRIOR_FLAG] == 0
        for column in PRIOR_COLUMNS:
            if column in columns:
                columns[column] = np.where(missing, NO_PRIOR, columns[column])
    return columns
