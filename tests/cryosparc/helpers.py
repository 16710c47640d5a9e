"""Small cryoSPARC-like particle sets for tests, written with numpy/mrcfile, not with the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.io.helpers import make_stack

# The dtypes of a real 2D-classification export (cryosparc_J2_particles_exported.cs), slot by slot.
BLOB = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"), ("blob/sign", "<f4")]
CTF = [("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
       ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
       ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"), ("ctf/bfactor", "<f4")]
ALIGN2D = [("alignments2D/split", "<u4"), ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"),
           ("alignments2D/psize_A", "<f4"), ("alignments2D/class", "<u4")]
LOCATION = [("location/micrograph_path", "S32"), ("location/center_x_frac", "<f4")]


def particle_records(n: int, stack: str, box: int = 16, psize: float = 2.0, seed: int = 0,
                     slots: tuple[str, ...] = ("blob", "ctf", "alignments2D")) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fields = [BLOB[0]] + (BLOB[1:] if "blob" in slots else []) + (CTF if "ctf" in slots else [])
    fields += (ALIGN2D if "alignments2D" in slots else []) + (LOCATION if "location" in slots else [])
    rec = np.zeros(n, dtype=fields)
    rec["uid"] = rng.integers(1, 2**64 - 1, size=n, dtype=np.uint64)
    if "blob" in slots:
        rec["blob/path"] = stack.encode()
        rec["blob/idx"] = np.arange(n)
        rec["blob/shape"] = box
        rec["blob/psize_A"] = psize
        rec["blob/sign"] = -1
    if "ctf" in slots:
        rec["ctf/type"] = b"imported"
        rec["ctf/exp_group_id"] = 3
        rec["ctf/accel_kv"] = 300
        rec["ctf/cs_mm"] = 2.7
        rec["ctf/amp_contrast"] = 0.1
        rec["ctf/df1_A"] = rng.uniform(8000, 20000, n)
        rec["ctf/df2_A"] = rec["ctf/df1_A"] - 200
        rec["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, n)
        rec["ctf/scale"] = 1
    if "alignments2D" in slots:
        rec["alignments2D/shift"] = rng.uniform(-3, 3, (n, 2))
        rec["alignments2D/pose"] = rng.uniform(0, 2 * np.pi, n)
        rec["alignments2D/psize_A"] = psize
        rec["alignments2D/class"] = rng.integers(0, 4, n)
    if "location" in slots:
        rec["location/micrograph_path"] = b"J2/motioncorrected/mic.mrc"
        rec["location/center_x_frac"] = rng.uniform(0, 1, n)
    return rec


def save_records(records: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # np.save on a name would append .npy
        np.save(fh, records)
    return path


def make_project(root: Path, n: int = 12, box: int = 16, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A cryoSPARC-like project: ``J5/extract/mic_particles.mrc`` and ``J6/J6_particles.cs`` naming it."""
    (root / "J5" / "extract").mkdir(parents=True, exist_ok=True)
    images = make_stack(root / "J5" / "extract" / "mic_particles.mrc", n, box, seed=seed)
    records = particle_records(n, "J5/extract/mic_particles.mrc", box, seed=seed)
    cs = save_records(records, root / "J6" / "J6_particles.cs")
    return cs, records, images
