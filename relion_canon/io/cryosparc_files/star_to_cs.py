"""RELION particle tables -> cryoSPARC particle records: fresh ones (``convert``), or a job's results written
back into the input's records (the reverse of :mod:`relion_canon.io.cryosparc_files.cs_to_star`).

Our estimates go to :data:`~relion_canon.io.cryosparc_files.layout.CANON_FIELDS`; since no cryoSPARC job reads
those, the in-plane angle in the particle's class frame is also written to ``alignments2D/pose``: ``rlnAnglePsi``,
or ``rlnCanonClassPsi`` where the job had a reference map, since ``rlnAnglePsi`` then is the 3-D psi.

With a reference map the 3-D orientation goes to ``alignments3D``: ``pose`` (the rotation vector of RELION's
rot, tilt, psi, as :func:`~relion_canon.io.cryosparc_files.poses.euler_to_pose3d` converts them), ``shift`` (px)
and ``psize_A``. cryoSPARC has no null value and its jobs read every row of a slot, so a particle without a 3-D
orientation (its STAR priors are RELION's "no prior", 999) gets the zero pose, its shift (the centre is known
either way) and ``relion_canon/has_prior`` 0 (:func:`posed_rows`); the result group ``particles_posed`` holds only the kept particles with one, the set to
give cryoSPARC's Local Refinement.
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
    CANON_TILT_FIELDS,
    CTF_FIELDS,
    NEUTRAL_VALUES,
    PRIOR_COLUMNS,
    PRIOR_FLAG,
    allocate,
    field_names,
    with_fields,
)
from relion_canon.io.cryosparc_files.poses import euler_to_pose3d, psi_to_pose2d
from relion_canon.io.imagename import ImageRef, parse_image_name
from relion_canon.io.star import NO_PRIOR, Optics, ParticleStar

_EXP_GROUP_RE = re.compile(r"^exp_group_(\d+)")
_EULER_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
CLASS_PSI_COLUMN = "rlnCanonClassPsi"


# --- which rows and slots get which pose ----------------------------------------------------------------------------


def no_prior(values: Any) -> np.ndarray:
    """(N,) bool: where prior values are RELION's "no prior" (relion_refine's own test is ``> 998.99``)."""
    return np.asarray(values, dtype=np.float64) > NO_PRIOR - 0.01


def posed_rows(particles: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the rows whose rlnAngleRot/Tilt/Psi are a 3-D orientation. The job gives a particle without
    one rot = tilt = 0, its in-class psi and the prior 999, so those with ``rlnAngleTiltPrior`` 999 are out."""
    if "rlnAngleTiltPrior" not in particles.columns:
        return np.ones(len(particles), dtype=bool)
    return ~no_prior(particles["rlnAngleTiltPrior"])


def in_plane_psi(particles: pd.DataFrame) -> np.ndarray | None:
    """(N,) degrees: the in-plane angle in the particle's class frame, what ``alignments2D/pose`` holds."""
    for column in (CLASS_PSI_COLUMN, "rlnAnglePsi"):
        if column in particles.columns:
            return particles[column].to_numpy(np.float64)
    return None


def _prior_flag_needed(particles: pd.DataFrame) -> bool:
    """A table with 3-D priors, or with any prior RELION reads as none, gets :data:`PRIOR_FLAG`."""
    present = [c for c in PRIOR_COLUMNS if c in particles.columns]
    return "rlnAngleTiltPrior" in present or any(no_prior(particles[c]).any() for c in present)


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
    psi = in_plane_psi(p)
    poses: dict[str, np.ndarray] = {}
    if euler is not None:
        poses["alignments3D"] = euler_to_pose3d(euler) * posed_rows(p)[:, None]
    if psi is not None and (euler is None or CLASS_PSI_COLUMN in p.columns):
        poses["alignments2D"] = psi_to_pose2d(psi)
    names = [(blob_paths or {}).get(r.path, r.path) for r in refs]

    out = allocate(len(p), _record_fields(names, p, ctf is not None, list(poses)))
    out["uid"] = _uids(star, seed)
    _fill_blob(out, refs, names, sizes, optics)
    if ctf is not None:
        _fill_ctf(out, star, ctf, optics)
    for slot, pose in poses.items():
        _fill_alignments(out, slot, star, pose, optics)
    set_canon_fields(out, star)
    return out


def _record_fields(blob_paths: Sequence[str], particles: pd.DataFrame, with_ctf: bool,
                   slots: Sequence[str]) -> list[tuple]:
    """The dtype of a fresh table: uid, blob, the CTF and alignment slots we have values for, our fields."""
    width = max([len(s.encode()) for s in blob_paths] + [1])
    fields: list[tuple] = [("uid", "<u8"), ("blob/path", f"S{width}"), *BLOB_FIELDS]
    if with_ctf:
        fields += CTF_FIELDS
    if "alignments2D" in slots:
        fields += ALIGNMENTS2D_FIELDS
    if "alignments3D" in slots:
        fields += ALIGNMENTS3D_FIELDS
    return fields + _canon_field_list(particles)


def _canon_field_list(particles: pd.DataFrame) -> list[tuple]:
    """Our fields for the columns ``particles`` has, with :data:`PRIOR_FLAG` where it is needed."""
    fields = [(f, dt) for f, (col, dt) in CANON_FIELDS.items() if col in particles.columns]
    return fields + ([(PRIOR_FLAG, "<u4")] if _prior_flag_needed(particles) else [])


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


def _fill_alignments(out: np.ndarray, slot: str, star: ParticleStar, pose: np.ndarray, optics: Optics) -> None:
    """Pose, shift in pixels, class and half-set of ``slot``."""
    p = star.particles
    out[f"{slot}/pose"] = pose
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

    Every input field is kept; ``alignments2D/pose`` is set from the in-plane angle in the class frame
    (:func:`in_plane_psi`; a whole ``alignments2D`` slot is added where the input had none), with a reference map
    ``alignments3D`` from the 3-D angles (:func:`fill_alignments3d`), and the :data:`CANON_FIELDS` present in the
    results are added. The CTF is left as it was: our defocus estimate goes to ``relion_canon/defocus_A``.
    """
    pos = result_positions(records, results)
    p = results.particles
    source = records[pos]
    psi = in_plane_psi(p)
    # Only the job's own 3-D orientations: a table read from a .cs with alignments3D has rlnAngleRot/Tilt too,
    # and those are passed through as they came.
    three_d = CLASS_PSI_COLUMN in p.columns and set(_EULER_COLUMNS) <= set(p.columns)
    fields = (ALIGNMENTS2D_FIELDS if psi is not None else []) + (ALIGNMENTS3D_FIELDS if three_d else [])
    out = with_fields(source, fields + _canon_field_list(p))
    origins = results.origins_angstrom()
    if psi is not None:
        fill_alignments2d(out, source, psi, origins)
    if three_d:
        fill_alignments3d(out, source, p[_EULER_COLUMNS].to_numpy(np.float64), posed_rows(p), origins)
    set_canon_fields(out, results)
    return out


def _copy_slot(target: Any, source: np.ndarray, slot: str, ours: Sequence[str]) -> None:
    """Every ``slot`` field of ``target`` but ``ours`` from ``source`` where it has it, else neutral."""
    src = set(source.dtype.names)
    for name in field_names(target):
        if not name.startswith(f"{slot}/") or name in ours:
            continue
        if name in src:
            target[name] = source[name]
        elif name in NEUTRAL_VALUES:
            target[name] = NEUTRAL_VALUES[name]


def fill_alignments2d(target: Any, source: np.ndarray, psi: np.ndarray, origins_a: np.ndarray | None = None) -> None:
    """Write an ``alignments2D`` slot into ``target`` (a record array or cryosparc-tools Dataset, same rows).

    ``alignments2D/pose`` comes from ``psi`` (degrees) and the shift from ``origins_a`` (Å, the centres the job
    found, which go with that angle), in pixels of the slot's pixel size. Every other field is copied from
    ``source`` (the input particles) where it has it; otherwise the pixel size comes from ``blob/psize_A``, and
    the rest are neutral (one class, certain, half-set 0).
    """
    src = set(source.dtype.names)
    names = field_names(target)
    ours = ["alignments2D/pose"]
    if "alignments2D/psize_A" not in src and "blob/psize_A" in src and "alignments2D/psize_A" in names:
        target["alignments2D/psize_A"] = source["blob/psize_A"]
        ours.append("alignments2D/psize_A")
    psize = next((source[f] for f in ("alignments2D/psize_A", "blob/psize_A") if f in src), None)
    if origins_a is not None and psize is not None:
        target["alignments2D/shift"] = np.asarray(origins_a, np.float64) / psize.astype(np.float64)[:, None]
        ours.append("alignments2D/shift")
    _copy_slot(target, source, "alignments2D", ours)
    target["alignments2D/pose"] = psi_to_pose2d(psi)


def fill_alignments3d(target: Any, source: np.ndarray, euler: np.ndarray, posed: np.ndarray,
                      origins_a: np.ndarray) -> None:
    """Write the job's 3-D orientations into ``target``'s ``alignments3D`` slot (same rows as ``source``).

    ``pose`` is the rotation vector of ``euler`` (N, 3: RELION's rot, tilt, psi in degrees), ``shift`` the
    origins ``origins_a`` (Å) in pixels of ``blob/psize_A``, which ``psize_A`` gets; rows not ``posed`` (no
    3-D orientation) get the zero pose and keep their shift, the centre the alignment found (see the module
    docstring). ``split`` (the half-set) is the input's, else the last bit of the uid. The slot's other fields
    are the input's where it had them, else neutral.
    """
    keep = np.asarray(posed, dtype=bool)[:, None]
    psize = source["blob/psize_A"].astype(np.float64)
    target["alignments3D/pose"] = euler_to_pose3d(euler) * keep
    target["alignments3D/shift"] = np.asarray(origins_a, np.float64) / psize[:, None]
    target["alignments3D/psize_A"] = psize
    ours = ["alignments3D/pose", "alignments3D/shift", "alignments3D/psize_A"]
    if "alignments3D/split" not in source.dtype.names and "alignments3D/split" in field_names(target):
        # Local Refinement and Homogeneous Reconstruction need gold-standard half-sets; one slot of all zeros
        # would be a single half. The uid's last bit is a fixed, even split the input's next jobs agree on.
        target["alignments3D/split"] = (source["uid"].astype(np.uint64) & np.uint64(1)).astype(np.uint32)
        ours.append("alignments3D/split")
    _copy_slot(target, source, "alignments3D", ours)


def set_canon_fields(out: Any, results: ParticleStar) -> None:
    """Copy our estimates from the results' columns into the :data:`CANON_FIELDS` that ``out`` has; RELION's
    "no prior" becomes 0 with :data:`PRIOR_FLAG` 0 (see :mod:`~relion_canon.io.cryosparc_files.layout`)."""
    p = results.particles
    names = field_names(out)
    missing = np.zeros(len(p), dtype=bool)
    for column in PRIOR_COLUMNS:
        if column in p.columns:
            missing |= no_prior(p[column])
    for field, (column, _) in CANON_FIELDS.items():
        if column in p.columns and field in names:
            values = p[column].to_numpy(np.float64)
            if column in PRIOR_COLUMNS:
                values = np.where(missing, 0.0, values)
            if field in CANON_TILT_FIELDS:
                values = np.deg2rad(values)
            elif field in CANON_ANGLE_FIELDS:
                values = psi_to_pose2d(values)
            out[field] = values
    if PRIOR_FLAG in names:
        out[PRIOR_FLAG] = (~missing).astype(np.uint32)
