"""RELION particle tables -> cryoSPARC particle records: fresh ones (``convert``), or a job's results written
back into the input's records (the reverse of :mod:`relion_canon.io.cryosparc_files.cs_to_star`).

Our estimates go to :data:`~relion_canon.io.cryosparc_files.layout.CANON_FIELDS`; since no cryoSPARC job reads
those, the in-plane angle is also written to ``alignments2D/pose``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from relion_canon.ctf import CtfParams
from relion_canon.errors import InputError
from relion_canon.io.cryosparc_files.join import result_positions, star_uids
from relion_canon.io.cryosparc_files.layout import (
    ALIGNMENTS2D_FIELDS,
    ALIGNMENTS3D_FIELDS,
    BLOB_FIELDS,
    CANON_ANGLE_FIELDS,
    CANON_FIELDS,
    CTF_FIELDS,
    NEUTRAL_VALUES,
    allocate,
    field_names,
    with_fields,
)
from relion_canon.io.cryosparc_files.poses import euler_to_pose3d, psi_to_pose2d
from relion_canon.io.imagename import ImageRef, parse_image_name
from relion_canon.io.star import Optics, ParticleStar

_EXP_GROUP_RE = re.compile(r"^exp_group_(\d+)")
_EULER_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


# --- a fresh table --------------------------------------------------------------------------------------------------


def star_to_records(star: ParticleStar, blob_paths: Mapping[str, str] | None = None,
                    box: int | None = None, seed: int | None = None) -> np.ndarray:
    """A fresh cryoSPARC particle table from a RELION particle table (``convert`` STAR -> .cs).

    ``blob_paths`` maps each stack name of the STAR to the ``blob/path`` to write (default: as written).
    ``box`` is used where the STAR gives no ``rlnImageSize``. uids come from ``rlnCanonUid`` when present,
    else are drawn at random as cryoSPARC does.
    """
    p = star.particles
    refs = [parse_image_name(name, star.path, row + 1) for row, name in enumerate(star.image_names)]
    optics = star.optics()
    optics.require(star.path, "pixel_size")
    ctf = star.ctf_params() if "rlnDefocusU" in p.columns else None
    sizes = _image_sizes(star, box)
    euler = p[_EULER_COLUMNS].to_numpy(np.float64) if set(_EULER_COLUMNS) <= set(p.columns) else None
    slot = "alignments3D" if euler is not None else "alignments2D" if "rlnAnglePsi" in p.columns else None
    names = [(blob_paths or {}).get(r.path, r.path) for r in refs]

    out = allocate(len(p), _record_fields(names, p.columns, ctf is not None, slot))
    out["uid"] = _uids(star, seed)
    _fill_blob(out, refs, names, sizes, optics)
    if ctf is not None:
        _fill_ctf(out, star, ctf, optics)
    if slot is not None:
        _fill_alignments(out, slot, star, euler, optics)
    set_canon_fields(out, star)
    return out


def _record_fields(blob_paths: Sequence[str], columns: pd.Index, with_ctf: bool, slot: str | None) -> list[tuple]:
    """The dtype of a fresh table: uid, blob, the CTF and alignment slots we have values for, our fields."""
    width = max([len(s.encode()) for s in blob_paths] + [1])
    fields: list[tuple] = [("uid", "<u8"), ("blob/path", f"S{width}"), *BLOB_FIELDS]
    if with_ctf:
        fields += CTF_FIELDS
    if slot == "alignments3D":
        fields += ALIGNMENTS3D_FIELDS
    elif slot == "alignments2D":
        fields += ALIGNMENTS2D_FIELDS
    fields += [(f, dt) for f, (col, dt) in CANON_FIELDS.items() if col in columns]
    return fields


def _uids(star: ParticleStar, seed: int | None) -> np.ndarray:
    """``rlnCanonUid`` when the table has it, else random 64-bit uids as cryoSPARC draws them."""
    uids = star_uids(star, required=False)
    if uids is not None:
        return uids
    return np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, size=len(star), dtype=np.uint64,
                                                endpoint=True)


def _fill_blob(out: np.ndarray, refs: Sequence[ImageRef], blob_paths: Sequence[str], sizes: np.ndarray,
               optics: Optics) -> None:
    out["blob/path"] = [s.encode() for s in blob_paths]
    out["blob/idx"] = [r.index for r in refs]
    out["blob/shape"] = np.stack([sizes, sizes], axis=1)
    out["blob/psize_A"] = optics.pixel_size


def _fill_ctf(out: np.ndarray, star: ParticleStar, ctf: CtfParams, optics: Optics) -> None:
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
    if "rlnCtfScalefactor" in star.particles.columns:
        out["ctf/scale"] = star.particles["rlnCtfScalefactor"].to_numpy(np.float64)


def _fill_alignments(out: np.ndarray, slot: str, star: ParticleStar, euler: np.ndarray | None,
                     optics: Optics) -> None:
    """Pose (3D from Euler angles, else in-plane from psi), shift in pixels, class and half-set of ``slot``."""
    p = star.particles
    out[f"{slot}/pose"] = euler_to_pose3d(euler) if euler is not None else psi_to_pose2d(p["rlnAnglePsi"])
    out[f"{slot}/psize_A"] = optics.pixel_size
    out[f"{slot}/shift"] = star.origins_angstrom() / optics.pixel_size[:, None]
    if "rlnClassNumber" in p.columns:
        out[f"{slot}/class"] = np.maximum(p["rlnClassNumber"].to_numpy(np.int64) - 1, 0)
    if "rlnRandomSubset" in p.columns:
        out[f"{slot}/split"] = np.maximum(p["rlnRandomSubset"].to_numpy(np.int64) - 1, 0)


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


# --- results written back -------------------------------------------------------------------------------------------


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
    out = with_fields(source, fields)
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
    src = set(source.dtype.names)
    for name in field_names(target):
        if not name.startswith("alignments2D/") or name == "alignments2D/pose":
            continue
        if name in src:
            target[name] = source[name]
        elif name == "alignments2D/psize_A" and "blob/psize_A" in src:
            target[name] = source["blob/psize_A"]
        elif name == "alignments2D/shift" and origins_a is not None and "blob/psize_A" in src:
            target[name] = np.asarray(origins_a, np.float64) / source["blob/psize_A"].astype(np.float64)[:, None]
        elif name in NEUTRAL_VALUES:
            target[name] = NEUTRAL_VALUES[name]
    target["alignments2D/pose"] = psi_to_pose2d(psi)


def set_canon_fields(out: Any, results: ParticleStar) -> None:
    """Copy our estimates from the results' columns into the :data:`CANON_FIELDS` that ``out`` has."""
    p = results.particles
    names = field_names(out)
    for field, (column, _) in CANON_FIELDS.items():
        if column in p.columns and field in names:
            values = p[column].to_numpy(np.float64)
            out[field] = psi_to_pose2d(values) if field in CANON_ANGLE_FIELDS else values
