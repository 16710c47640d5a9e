"""cryoSPARC particle ``.cs`` files <-> RELION particle tables (:class:`ParticleStar`), and ``.csg`` result groups.

A ``.cs`` file is a 1-D NumPy record array (NUMPY format, ``np.load`` reads it) or cryosparc-tools' compressed
CSDAT format; columns are named ``slot/field`` and every row has a 64-bit ``uid``. Here a ``.cs`` is held as a
plain NumPy structured array with strings as fixed-width bytes, exactly what ``np.save`` writes back, so that
nothing but reading CSDAT needs cryosparc-tools.

Conventions (docs/cryosparc.md §3, checked against the real fixtures in the tests):

* ``rlnImageName = f"{blob/idx + 1:06d}@{blob/path}"`` with a leading ``>`` (exported files) removed;
* ``rlnDefocusU/V = ctf/df1_A, df2_A``; ``rlnDefocusAngle = deg(ctf/df_angle_rad)``; ``rlnPhaseShift = deg(...)``;
* ``rlnImagePixelSize = blob/psize_A``, ``rlnImageSize = blob/shape[0]``, one optics group per cryoSPARC
  exposure group (``ctf/exp_group_id``) and set of optics values;
* ``rlnAngleRot/Tilt/Psi`` = intrinsic ZYZ Euler angles of the rotation vector ``alignments3D/pose``;
  ``rlnAnglePsi = deg(alignments2D/pose)`` wrapped to [−180, 180) when there is no 3D pose;
* ``rlnOriginX/YAngst = alignments*/shift × alignments*/psize_A`` (same sign);
* ``rlnClassNumber = class + 1``, ``rlnRandomSubset = split + 1``; ``rlnCanonUid = uid`` (to join results back).

Our own estimates travel in fields of their own (:data:`CANON_FIELDS`, slot ``relion_canon``); cryoSPARC keeps
them in the file but no cryoSPARC job reads them, so the in-plane angle is also written to ``alignments2D/pose``.
"""

from __future__ import annotations

import datetime
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.imagename import format_image_name, parse_image_name, resolve_path
from relion_canon.io.star import VERSION_31, ParticleStar

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
UID_COLUMN = "rlnCanonUid"
CANON_SLOT = "relion_canon"
INSTALL_HINT = "pip install 'relion_canon[cryosparc]' (cryosparc-tools, the version matching your cryoSPARC)"

# Our per-particle results in a .cs: field -> (STAR column, dtype). Angles in radians in [0, 2π) as in
# alignments2D/pose, defocus in Å, weight and outlier score as in the STAR, the outlier flag 0/1.
CANON_FIELDS: dict[str, tuple[str, str]] = {
    f"{CANON_SLOT}/pose": ("rlnAnglePsi", "<f4"),
    f"{CANON_SLOT}/pose_prior": ("rlnAnglePsiPrior", "<f4"),
    f"{CANON_SLOT}/defocus_A": ("rlnCanonDefocus", "<f4"),
    f"{CANON_SLOT}/weight": ("rlnParticleFigureOfMerit", "<f4"),
    f"{CANON_SLOT}/outlier_score": ("rlnParticleSelectZScore", "<f4"),
    f"{CANON_SLOT}/is_outlier": ("rlnCanonIsOutlier", "<u4"),
}
_CANON_ANGLES = {f"{CANON_SLOT}/pose", f"{CANON_SLOT}/pose_prior"}

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
_DEFAULTS = {"ctf/scale": 1.0, "blob/sign": -1.0, "alignments2D/alpha": 1.0, "alignments2D/class_posterior": 1.0,
             "alignments3D/alpha": 1.0, "alignments3D/class_posterior": 1.0}

_JOB_DIR_RE = re.compile(r"^J\d+$")
_EXP_GROUP_RE = re.compile(r"^exp_group_(\d+)")


# --- reading ----------------------------------------------------------------------------------------------------


def cryosparc_tools_version() -> str | None:
    """The installed cryosparc-tools version, or None when it is not installed."""
    try:
        import cryosparc
    except ImportError:
        return None
    return str(getattr(cryosparc, "__version__", "unknown"))


def _dataset_class():
    try:
        from cryosparc.dataset import Dataset
    except ImportError:
        return None
    return Dataset


def as_records(table: Any) -> np.ndarray:
    """A cryosparc-tools ``Dataset`` or any record array as a plain, packed structured array, strings as bytes."""
    if hasattr(table, "to_records"):
        table = table.to_records(fixed=True)
    arr = np.asarray(table)
    if arr.dtype.names is None:
        raise TypeError("not a structured array / cryoSPARC dataset")
    fields = []
    for name in arr.dtype.names:
        sub = arr.dtype[name]
        if sub.kind == "O":  # str objects (a hand-made Dataset): fixed-width bytes, as np.save needs
            width = max([len(str(v).encode()) for v in arr[name]] + [1])
            sub = np.dtype(f"S{width}")
        fields.append((name, sub))
    dtype = np.dtype(fields)  # packed, without numpy.record or the padding of a field subset
    if type(arr) is np.ndarray and arr.dtype == dtype and arr.dtype.type is np.void:
        return arr
    out = np.empty(len(arr), dtype)
    for name in arr.dtype.names:
        out[name] = [str(v).encode() for v in arr[name]] if arr.dtype[name].kind == "O" else arr[name]
    return out


def _descr(dtype: np.dtype) -> list[tuple[str, np.dtype]]:
    return [(name, dtype[name]) for name in dtype.names]


def load_cs(path: str | Path) -> np.ndarray:
    """Read one ``.cs`` file (NUMPY or CSDAT format) as a structured array; :class:`InputError` if unusable.

    Uses cryosparc-tools' ``Dataset.load`` when it is installed (it reads both formats); without it NUMPY
    files are read with ``np.load`` and CSDAT files are refused with the command that installs it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(".cs file not found", path)
    if path.is_dir():
        raise InputError("is a directory, not a .cs file", path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic not in (NUMPY_MAGIC, CSDAT_MAGIC):
        what = "empty" if not magic else "neither NumPy nor CSDAT format"
        raise InputError(f"not a cryoSPARC .cs file ({what})", path)
    dataset = _dataset_class()
    if magic == CSDAT_MAGIC and dataset is None:
        raise InputError(f"this .cs file is in cryoSPARC's compressed CSDAT format, which needs cryosparc-tools: "
                         f"{INSTALL_HINT}", path)
    try:
        if dataset is not None:
            records = as_records(dataset.load(path))
        else:
            records = np.load(path, allow_pickle=False, max_header_size=1024**3)
    except Exception as exc:  # numpy / cryosparc-tools raise many types for truncated or corrupt files
        raise InputError(f"cannot read .cs file ({type(exc).__name__}: {exc})", path) from exc
    if records.dtype.names is None or records.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (not a 1-D table with named fields)", path)
    records = as_records(records)
    if "uid" not in records.dtype.names:
        raise InputError("no uid field: not a cryoSPARC particle file", path)
    return records


def join_passthrough(main: np.ndarray, passthrough: np.ndarray, main_path: str | Path,
                     passthrough_path: str | Path) -> np.ndarray:
    """Inner join on ``uid`` in the main file's row order; the main file's fields win over the passthrough's.

    Every particle of the main file must be in the passthrough file (a passthrough file may hold more).
    """
    _check_unique_uids(main, main_path)
    _check_unique_uids(passthrough, passthrough_path)
    pos = _positions(passthrough["uid"], main["uid"])
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        row = int(missing[0])
        raise InputError(
            f"uid {int(main['uid'][row])} is not in the passthrough file {passthrough_path} "
            f"({missing.size} of {len(main)} particles do not join; is it the passthrough of the same job?)",
            main_path, row + 1)
    extra = [n for n in passthrough.dtype.names if n not in main.dtype.names]
    out = np.zeros(len(main), dtype=_descr(main.dtype) + [(n, passthrough.dtype[n]) for n in extra])
    for name in main.dtype.names:
        out[name] = main[name]
    for name in extra:
        out[name] = passthrough[name][pos]
    return out


def read_cs_records(path: str | Path, passthrough: str | Path | None = None) -> np.ndarray:
    """A particles ``.cs`` joined with its passthrough ``.cs`` (if given), checked to be usable."""
    records = load_cs(path)
    if passthrough is not None:
        records = join_passthrough(records, load_cs(passthrough), path, passthrough)
    else:
        _check_unique_uids(records, path)
    if len(records) == 0:
        raise InputError("the .cs file has no particles", path)
    missing = [f for f in ("blob/path", "blob/idx") if f not in records.dtype.names]
    if missing:
        hint = "" if passthrough is not None else "; if the job split its output, give the passthrough .cs too"
        raise InputError(f"no {' / '.join(missing)} field: this .cs does not say where the particle images are "
                         f"(not an extracted-particles output{hint})", path)
    return records


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


def _check_unique_uids(records: np.ndarray, path: str | Path) -> None:
    uids = records["uid"]
    uniq, first, counts = np.unique(uids, return_index=True, return_counts=True)
    if uniq.size != uids.size:
        dup = int(np.flatnonzero(counts > 1)[0])
        rows = np.flatnonzero(uids == uniq[dup])
        raise InputError(f"uid {int(uniq[dup])} appears more than once (rows {rows[0] + 1} and {rows[1] + 1})",
                         path, int(rows[1]) + 1)


def _positions(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Index of each needle in ``haystack`` (unique values), −1 where absent."""
    haystack = np.asarray(haystack, dtype=np.uint64)
    needles = np.asarray(needles, dtype=np.uint64)
    if len(haystack) == 0:
        return np.full(len(needles), -1, np.int64)
    order = np.argsort(haystack, kind="stable")
    sorted_h = haystack[order]
    pos = np.minimum(np.searchsorted(sorted_h, needles), len(sorted_h) - 1)
    return np.where(sorted_h[pos] == needles, order[pos], -1)


# --- .cs -> STAR ------------------------------------------------------------------------------------------------


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


def records_to_star(records: np.ndarray, origin: str | Path, project_dir: str | Path | None = None,
                    require_stacks: bool = False) -> ParticleStar:
    """Convert joined ``.cs`` records to a RELION 3.1 :class:`ParticleStar` (see the module docstring)."""
    origin = Path(origin)
    has = set(records.dtype.names).__contains__

    # Image names: one lookup per stack, not per particle.
    paths, first, inverse = np.unique(records["blob/path"], return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    stack_names: list[str] = [""] * len(paths)
    raws = _strings(paths)
    for k in np.argsort(first, kind="stable"):  # in file order, so an error names the first row affected
        raw = raws[k]
        p = strip_export_prefix(raw)
        found = locate_stack(raw, origin, project_dir)
        if found is None and (require_stacks or project_dir is not None):
            row = int(first[k]) + 1
            where = (f"in the project directory {project_dir}" if project_dir is not None else
                     "in the working directory, beside the .cs or in its project folder (give --project-dir)")
            raise InputError(f"stack {p} (blob/path) not found {where}", origin, row)
        if project_dir is not None and not Path(p).is_absolute():
            # Absolute, so that it resolves whatever directory a reader later runs in.
            stack_names[k] = str(Path(project_dir).resolve() / p)
        else:
            stack_names[k] = str(found) if found is not None else p
    idx = records["blob/idx"].astype(np.int64)
    image_names = [format_image_name(i, stack_names[k]) for i, k in zip(idx.tolist(), inverse.tolist())]

    columns: dict[str, Any] = {"rlnImageName": image_names}
    if has("location/micrograph_path"):
        columns["rlnMicrographName"] = [strip_export_prefix(s) for s in _strings(records["location/micrograph_path"])]

    optics, group = _optics_table(records)
    columns["rlnOpticsGroup"] = group
    if has("ctf/df1_A"):
        columns["rlnDefocusU"] = _f8(records["ctf/df1_A"])
        columns["rlnDefocusV"] = _f8(records["ctf/df2_A"]) if has("ctf/df2_A") else columns["rlnDefocusU"]
        if has("ctf/df_angle_rad"):
            columns["rlnDefocusAngle"] = _degrees_f4(records["ctf/df_angle_rad"])
        if has("ctf/phase_shift_rad"):
            columns["rlnPhaseShift"] = _degrees_f4(records["ctf/phase_shift_rad"])
        if has("ctf/bfactor"):
            columns["rlnCtfBfactor"] = _f8(records["ctf/bfactor"])
        if has("ctf/scale"):
            columns["rlnCtfScalefactor"] = _f8(records["ctf/scale"])

    slot = "alignments3D" if has("alignments3D/pose") else "alignments2D" if has("alignments2D/pose") else None
    if slot is not None:
        pose = records[f"{slot}/pose"].astype(np.float64)
        if slot == "alignments3D":
            euler = pose3d_to_euler(pose)
            columns["rlnAngleRot"], columns["rlnAngleTilt"], columns["rlnAnglePsi"] = euler.T
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
    columns[UID_COLUMN] = records["uid"].astype(np.uint64)
    for field, (column, _) in CANON_FIELDS.items():
        if has(field):
            values = records[field]
            columns[column] = pose2d_to_psi(values.astype(np.float64)) if field in _CANON_ANGLES else (
                values.astype(np.int64) if values.dtype.kind in "iu" else _f8(values))

    particles = pd.DataFrame({k: (v if isinstance(v, list) else np.asarray(v)) for k, v in columns.items()})
    return ParticleStar(origin, {"optics": optics, "particles": particles}, "particles", VERSION_31)


def _optics_table(records: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """One optics group per exposure group and set of optics values; groups numbered 1..K as RELION needs."""
    has = set(records.dtype.names).__contains__
    n = len(records)
    exp = records["ctf/exp_group_id"].astype(np.int64) if has("ctf/exp_group_id") else np.zeros(n, np.int64)
    values = {
        "rlnAmplitudeContrast": "ctf/amp_contrast",
        "rlnSphericalAberration": "ctf/cs_mm",
        "rlnVoltage": "ctf/accel_kv",
        "rlnImagePixelSize": "blob/psize_A",
    }
    present = {label: _f8(records[field]) for label, field in values.items() if has(field)}
    if has("blob/shape"):
        present["rlnImageSize"] = records["blob/shape"][:, 0].astype(np.int64)
    labels = list(present)
    key = np.column_stack([exp.astype(np.float64)] + [present[label].astype(np.float64) for label in labels])
    groups, group_of = np.unique(key, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    exp_of_group = groups[:, 0].astype(np.int64)
    names = []
    for g, e in enumerate(exp_of_group):
        shared = (exp_of_group == e).sum() > 1
        names.append(f"exp_group_{e}" + (f"_{g + 1}" if shared else ""))
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, len(groups) + 1), "rlnOpticsGroupName": names})
    for j, label in enumerate(labels):
        optics[label] = groups[:, j + 1].astype(np.int64) if label == "rlnImageSize" else groups[:, j + 1]
    if "rlnImageSize" in optics.columns:
        optics["rlnImageDimensionality"] = 2
    return optics, group_of.astype(np.int64) + 1


# --- angles -----------------------------------------------------------------------------------------------------

_GIMBAL_EPS = 1e-6  # radians of tilt from 0 or 180° below which rot and psi are one rotation about z


def pose3d_to_euler(pose: np.ndarray) -> np.ndarray:
    """(N, 3) cryoSPARC rotation vectors (rad) -> (N, 3) RELION (rot, tilt, psi) in degrees, ZYZ intrinsic.

    RELION's matrix A(rot, tilt, psi) is the transpose of the rotation the vector describes. At tilt 0 or 180°
    only rot ± psi is defined; like pyem we then put it all into psi (rot = 0), the in-plane angle.
    """
    from scipy.spatial.transform import Rotation

    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's gimbal-lock warning: handled below
        euler = Rotation.from_rotvec(pose).as_euler("ZYZ")
    rot, tilt, psi = euler.T.copy()
    flat = np.abs(tilt) < _GIMBAL_EPS
    psi[flat], rot[flat] = psi[flat] + rot[flat], 0.0
    upside = np.abs(tilt - np.pi) < _GIMBAL_EPS
    psi[upside], rot[upside] = psi[upside] - rot[upside], 0.0
    out = np.rad2deg(np.stack([rot, tilt, psi], axis=1))
    out[:, 0] = wrap_degrees(out[:, 0])
    out[:, 2] = wrap_degrees(out[:, 2])
    return out


def euler_to_pose3d(euler: np.ndarray) -> np.ndarray:
    """(N, 3) RELION (rot, tilt, psi) in degrees -> (N, 3) cryoSPARC rotation vectors (rad, norm ≤ π)."""
    from scipy.spatial.transform import Rotation

    euler = np.asarray(euler, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_euler("ZYZ", euler, degrees=True).as_rotvec()


def wrap_degrees(angle: np.ndarray) -> np.ndarray:
    """Degrees into [−180, 180)."""
    return (np.asarray(angle, dtype=np.float64) + 180.0) % 360.0 - 180.0


def pose2d_to_psi(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC in-plane pose (rad) -> RELION psi (degrees in [−180, 180)); same sense, as pyem converts it."""
    return wrap_degrees(np.rad2deg(np.asarray(pose, dtype=np.float64)))


def psi_to_pose2d(psi: np.ndarray) -> np.ndarray:
    """RELION psi (degrees) -> cryoSPARC in-plane pose in radians in [0, 2π)."""
    pose = np.deg2rad(np.asarray(psi, dtype=np.float64)) % (2 * np.pi)
    return np.where(pose >= 2 * np.pi, 0.0, pose)  # float rounding can give exactly 2π


# --- STAR -> .cs ------------------------------------------------------------------------------------------------


def star_uids(star: ParticleStar, required: bool = True) -> np.ndarray | None:
    """The ``rlnCanonUid`` column as uint64; InputError when required and absent or not whole numbers."""
    p = star.particles
    if UID_COLUMN not in p.columns:
        if required:
            raise InputError(f"no {UID_COLUMN} column: these particles did not come from a cryoSPARC .cs, "
                             "so they cannot be joined back to one", star.path)
        return None
    col = p[UID_COLUMN]
    if col.dtype.kind in "iu":
        return col.to_numpy().astype(np.uint64)
    out = np.empty(len(col), np.uint64)
    for row, value in enumerate(col.astype(str)):
        try:
            number = int(value)
            if number < 0:
                raise ValueError
            out[row] = number
        except (ValueError, OverflowError):
            raise InputError(f"{UID_COLUMN} {value!r} is not a cryoSPARC uid", star.path, row + 1) from None
    return out


def star_to_records(star: ParticleStar, blob_paths: Mapping[str, str] | None = None,
                    box: int | None = None, seed: int | None = None) -> np.ndarray:
    """A fresh cryoSPARC particle table from a RELION particle table (``convert`` STAR -> .cs).

    ``blob_paths`` maps each stack name of the STAR to the ``blob/path`` to write (default: as written).
    ``box`` is used where the STAR gives no ``rlnImageSize``. uids come from ``rlnCanonUid`` when present,
    else are drawn at random as cryoSPARC does.
    """
    p = star.particles
    n = len(p)
    refs = [parse_image_name(name, star.path, row + 1) for row, name in enumerate(star.image_names)]
    optics = star.optics()
    optics.require(star.path, "pixel_size")
    ctf = star.ctf_params() if "rlnDefocusU" in p.columns else None
    sizes = _image_sizes(star, box)

    euler = None
    if {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(p.columns):
        euler = p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
    slot = "alignments3D" if euler is not None else "alignments2D" if "rlnAnglePsi" in p.columns else None

    names = [(blob_paths or {}).get(r.path, r.path) for r in refs]
    width = max([len(s.encode()) for s in names] + [1])
    fields: list[tuple] = [("uid", "<u8"), ("blob/path", f"S{width}"), *BLOB_FIELDS]
    if ctf is not None:
        fields += CTF_FIELDS
    if slot == "alignments3D":
        fields += ALIGNMENTS3D_FIELDS
    elif slot == "alignments2D":
        fields += ALIGNMENTS2D_FIELDS
    canon = [(f, dt) for f, (col, dt) in CANON_FIELDS.items() if col in p.columns]
    fields += canon
    out = _allocate(n, fields)

    uids = star_uids(star, required=False)
    out["uid"] = uids if uids is not None else np.random.default_rng(seed).integers(
        0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    out["blob/path"] = [s.encode() for s in names]
    out["blob/idx"] = [r.index for r in refs]
    out["blob/shape"] = np.stack([sizes, sizes], axis=1)
    out["blob/psize_A"] = optics.pixel_size
    if ctf is not None:
        out["ctf/type"] = b"imported"
        out["ctf/exp_group_id"] = _exp_group_ids(star, optics.group)
        out["ctf/accel_kv"] = ctf.voltage
        out["ctf/cs_mm"] = ctf.cs
        out["ctf/amp_contrast"] = ctf.amplitude_contrast
        out["ctf/df1_A"] = ctf.defocus_u
        out["ctf/df2_A"] = ctf.defocus_v
        out["ctf/df_angle_rad"] = np.deg2rad(ctf.defocus_angle)
        out["ctf/phase_shift_rad"] = np.deg2rad(ctf.phase_shift)
        out["ctf/bfactor"] = ctf.bfactor
        if "rlnCtfScalefactor" in p.columns:
            out["ctf/scale"] = p["rlnCtfScalefactor"].to_numpy(np.float64)
    if slot is not None:
        out[f"{slot}/pose"] = euler_to_pose3d(euler) if euler is not None else psi_to_pose2d(p["rlnAnglePsi"])
        out[f"{slot}/psize_A"] = optics.pixel_size
        out[f"{slot}/shift"] = star.origins_angstrom() / optics.pixel_size[:, None]
        if "rlnClassNumber" in p.columns:
            out[f"{slot}/class"] = np.maximum(p["rlnClassNumber"].to_numpy(np.int64) - 1, 0)
        if "rlnRandomSubset" in p.columns:
            out[f"{slot}/split"] = np.maximum(p["rlnRandomSubset"].to_numpy(np.int64) - 1, 0)
    set_canon_fields(out, star)
    return out


def _image_sizes(star: ParticleStar, box: int | None) -> np.ndarray:
    table = star.optics_table
    n = len(star)
    if table is not None and "rlnImageSize" in table.columns and "rlnOpticsGroup" in star.particles.columns:
        by_group = table.set_index(table["rlnOpticsGroup"].astype(int))["rlnImageSize"]
        sizes = by_group.reindex(star.particles["rlnOpticsGroup"].astype(int)).to_numpy(np.float64)
        if np.isfinite(sizes).all():
            return sizes.astype(np.int64)
    if box is None:
        raise InputError("image size unknown: no rlnImageSize in data_optics and the stacks were not found "
                         "(give --project-dir)", star.path)
    return np.full(n, box, np.int64)


def _exp_group_ids(star: ParticleStar, group: np.ndarray) -> np.ndarray:
    """cryoSPARC exposure groups: back from our ``exp_group_N`` names, else optics group − 1."""
    ids = np.maximum(group.astype(np.int64) - 1, 0)
    table = star.optics_table
    if table is None or "rlnOpticsGroupName" not in table.columns:
        return ids
    named = {}
    for g, name in zip(table["rlnOpticsGroup"].astype(int), table["rlnOpticsGroupName"].astype(str)):
        m = _EXP_GROUP_RE.match(name)
        if m:
            named[g] = int(m.group(1))
    return np.array([named.get(int(g), i) for g, i in zip(group, ids)], np.int64)


def _allocate(n: int, fields: Sequence[tuple]) -> np.ndarray:
    out = np.zeros(n, dtype=list(fields))
    for name, value in _DEFAULTS.items():
        if name in out.dtype.names:
            out[name] = value
    return out


def _with_fields(records: np.ndarray, fields: Sequence[tuple]) -> np.ndarray:
    """``records`` with any of ``fields`` it lacks appended (neutral values); existing fields are kept as they are."""
    new = [f for f in fields if f[0] not in records.dtype.names]
    if not new:
        return records.copy()
    out = _allocate(len(records), _descr(records.dtype) + list(new))
    for name in records.dtype.names:
        out[name] = records[name]
    return out


def result_positions(records: np.ndarray, results: ParticleStar) -> np.ndarray:
    """For each results row, its row in the input ``.cs`` records (joined on ``rlnCanonUid`` = ``uid``)."""
    uids = star_uids(results)
    pos = _positions(records["uid"], uids)
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        row = int(missing[0])
        raise InputError(f"{UID_COLUMN} {int(uids[row])} is not a particle of the input .cs "
                         f"({missing.size} particles do not join)", results.path, row + 1)
    return pos


def results_to_records(records: np.ndarray, results: ParticleStar) -> np.ndarray:
    """The input ``.cs`` records, in the results' order, with our estimates written in.

    Every input field is kept; ``alignments2D/pose`` is set from ``rlnAnglePsi`` (a whole ``alignments2D``
    slot is added where the input had none) and the :data:`CANON_FIELDS` present in the results are added.
    The CTF is left as it was: our defocus estimate goes to ``relion_canon/defocus_A``.
    """
    pos = result_positions(records, results)
    p = results.particles
    source = records[pos]
    fields = [(f, dt) for f, (col, dt) in CANON_FIELDS.items() if col in p.columns]
    if "rlnAnglePsi" in p.columns:
        fields = ALIGNMENTS2D_FIELDS + fields
    out = _with_fields(source, fields)
    if "rlnAnglePsi" in p.columns:
        fill_alignments2d(out, source, p["rlnAnglePsi"].to_numpy(np.float64), results.origins_angstrom())
    set_canon_fields(out, results)
    return out


def fill_alignments2d(target: Any, source: np.ndarray, psi: np.ndarray, origins_a: np.ndarray | None = None) -> None:
    """Write an ``alignments2D`` slot into ``target`` (a record array or cryosparc-tools Dataset, same rows).

    ``alignments2D/pose`` comes from ``psi`` (degrees). Every other field is copied from ``source`` (the input
    particles) where it has it; otherwise the shift comes from ``origins_a`` (Å), the pixel size from
    ``blob/psize_A``, and the rest are neutral (one class, certain, half-set 0).
    """
    names = target.dtype.names if hasattr(target, "dtype") else target.fields()
    src = set(source.dtype.names)
    for name in names:
        if not name.startswith("alignments2D/") or name == "alignments2D/pose":
            continue
        if name in src:
            target[name] = source[name]
        elif name == "alignments2D/psize_A" and "blob/psize_A" in src:
            target[name] = source["blob/psize_A"]
        elif name == "alignments2D/shift" and origins_a is not None and "blob/psize_A" in src:
            target[name] = np.asarray(origins_a, np.float64) / source["blob/psize_A"].astype(np.float64)[:, None]
        elif name in _DEFAULTS:
            target[name] = _DEFAULTS[name]
    target["alignments2D/pose"] = psi_to_pose2d(psi)


def set_canon_fields(out: Any, results: ParticleStar) -> None:
    """Copy our estimates from the results' columns into the :data:`CANON_FIELDS` that ``out`` has."""
    p = results.particles
    names = out.dtype.names if hasattr(out, "dtype") else out.fields()
    for field, (column, _) in CANON_FIELDS.items():
        if column in p.columns and field in names:
            values = p[column].to_numpy(np.float64)
            out[field] = psi_to_pose2d(values) if field in _CANON_ANGLES else values


# --- writing ----------------------------------------------------------------------------------------------------


def save_cs(records: np.ndarray, path: str | Path) -> Path:
    """Write a ``.cs`` in NUMPY format (what cryoSPARC and ``np.load`` read), atomically."""
    path = Path(path)
    records = as_records(records)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, records, allow_pickle=False)
    return path


def slot_types(records: np.ndarray) -> dict[str, str]:
    """cryoSPARC slot -> result type for a ``.csg``; our own slot is left out (no cryoSPARC job knows its type)."""
    out: dict[str, str] = {}
    for name in records.dtype.names:
        if "/" not in name:
            continue
        slot = name.split("/", 1)[0]
        if slot == CANON_SLOT or slot in out:
            continue
        dtype = "alignments3D" if re.match(r"^alignments_class_\d+$", slot) else slot
        out[slot] = f"particle.{dtype}"
    return out


def _yaml_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def csg_text(metafile: str, records: np.ndarray, name: str, title: str, description: str,
             created: datetime.datetime | None = None) -> str:
    """The YAML of a ``.csg`` result group whose every slot lives in ``metafile`` (relative to the ``.csg``)."""
    created = created or datetime.datetime.now()
    lines = [
        f"created: {created.strftime('%Y-%m-%d %H:%M:%S.%f')}",
        "group:",
        f"  description: {_yaml_str(description)}",
        f"  name: {name}",
        f"  title: {_yaml_str(title)}",
        "  type: particle",
        "results:",
    ]
    for slot, kind in slot_types(records).items():
        lines += [f"  {slot}:", f"    metafile: {_yaml_str('>' + metafile)}", f"    num_items: {len(records)}",
                  f"    type: {kind}"]
    version = cryosparc_tools_version()
    if version:
        lines.append(f"version: v{version}")
    return "\n".join(lines) + "\n"


def write_csg(path: str | Path, cs_path: str | Path, records: np.ndarray, name: str, title: str,
              description: str) -> Path:
    """Write the ``.csg`` that lets cryoSPARC's "Import Result Group" job take ``cs_path`` (same folder)."""
    path = Path(path)
    text = csg_text(os.path.relpath(cs_path, path.parent), records, name, title, description)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
