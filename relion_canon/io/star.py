"""RELION particle STAR files of every generation (3.0, 3.1/4.0, 5.0): read, resolve optics, write back.

A STAR file is kept as an ordered dict of blocks exactly as ``starfile`` reads it, so that writing it back
keeps every block, column and row order; new per-particle columns are appended to the particle table.
"""

from __future__ import annotations

import linecache
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import starfile

from relion_canon.ctf import CtfParams
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.star_text import lone_carriage_return_line, why_not_utf8
from relion_canon.io.star_writer import star_text

# Image files (a particle stack, a micrograph): given where a STAR file belongs, they are named as such.
STACK_SUFFIXES = (".mrcs", ".mrc", ".st", ".map")
_MRC_MAP = b"MAP "  # bytes 208-211 of every MRC2014 header

# Block names RELION has used for the particle table, newest first.
PARTICLE_BLOCK_NAMES = ("particles", "images", "")
OPTICS_BLOCK = "optics"

# RELION 3.1+ writes every block preceded by this comment; 3.1 treats a file without it as 3.0-style.
VERSION_31 = 30001
VERSION_50 = 50001

_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)")

# Optics values resolved per particle: (our name, RELION labels in order of preference).
_OPTICS_LABELS: dict[str, tuple[str, ...]] = {
    "voltage": ("rlnVoltage",),
    "cs": ("rlnSphericalAberration",),
    "amplitude_contrast": ("rlnAmplitudeContrast",),
    "pixel_size": ("rlnImagePixelSize", "rlnPixelSize"),
}
# Assumed when a file gives no amplitude contrast at all (the usual value for vitreous ice); `info` says so.
DEFAULT_AMPLITUDE_CONTRAST = 0.1
# RELION's value for "no prior" in rlnAngleRot/Tilt/PsiPrior (relion_refine fills absent priors with it).
NO_PRIOR = 999.0


@dataclass
class Optics:
    """Per-particle optics, resolved through ``rlnOpticsGroup`` (or read from the particle table in 3.0 files).

    Arrays are float64 of length N; ``None`` means the file does not give that value for any particle.
    """

    voltage: np.ndarray | None
    cs: np.ndarray | None
    amplitude_contrast: np.ndarray | None
    pixel_size: np.ndarray | None
    group: np.ndarray  # 1-based optics group per particle (all 1 for 3.0 files)
    missing: dict[str, list[int]] = field(default_factory=dict)  # value -> 1-based rows lacking it

    def require(self, path: str | Path, *names: str) -> None:
        """Raise one clear error if any of ``names`` is missing for any particle."""
        for name in names:
            if getattr(self, name) is None or self.missing.get(name):
                rows = self.missing.get(name) or []
                label = "/".join(_OPTICS_LABELS[name])
                row = rows[0] if rows else None
                raise InputError(f"missing optics value {name} ({label})", path, row)


@dataclass
class ParticleStar:
    """A particle STAR file held as its blocks, plus what RELION generation wrote it."""

    path: Path
    blocks: dict[str, pd.DataFrame | dict]
    particles_block: str
    version: int | None  # 30001, 50001, or None for files without a version line (RELION <= 3.0)

    @property
    def particles(self) -> pd.DataFrame:
        return self.blocks[self.particles_block]  # type: ignore[return-value]

    @property
    def optics_table(self) -> pd.DataFrame | None:
        block = self.blocks.get(OPTICS_BLOCK)
        return block if isinstance(block, pd.DataFrame) else None

    @property
    def generation(self) -> str:
        """'3.0', '3.1' (also written by 4.0) or '5.0'."""
        if self.version is not None and self.version >= VERSION_50:
            return "5.0"
        if self.optics_table is not None or self.version is not None:
            return "3.1"
        return "3.0"

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def image_names(self) -> list[str]:
        if "rlnImageName" not in self.particles.columns:
            raise InputError("particle table has no rlnImageName column", self.path)
        return self.particles["rlnImageName"].astype(str).tolist()

    def optics(self) -> Optics:
        """Resolve voltage, Cs, amplitude contrast and pixel size for every particle."""
        return _resolve_optics(self)

    def ctf_params(self) -> CtfParams:
        """Per-particle CTF parameters; raises naming the file and row when a needed value is missing."""
        p = self.particles
        n = len(p)
        missing = [c for c in ("rlnDefocusU", "rlnDefocusV") if c not in p.columns]
        if missing:
            raise InputError(f"no {' / '.join(missing)} column: CTF parameters are unknown", self.path)
        optics = self.optics()
        optics.require(self.path, "voltage", "cs", "amplitude_contrast")

        def col(label: str, default: float = 0.0) -> np.ndarray:
            if label not in p.columns:
                return np.full(n, default)
            values = pd.to_numeric(p[label], errors="coerce").to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise InputError(f"{label} is not a number", self.path, int(bad[0]) + 1)
            return values

        return CtfParams(
            defocus_u=col("rlnDefocusU"),
            defocus_v=col("rlnDefocusV"),
            defocus_angle=col("rlnDefocusAngle"),
            voltage=optics.voltage,
            cs=optics.cs,
            amplitude_contrast=optics.amplitude_contrast,
            phase_shift=col("rlnPhaseShift"),
            bfactor=col("rlnCtfBfactor"),
        )

    def origins_angstrom(self) -> np.ndarray:
        """(N, 2) particle origin (x, y) in Å; RELION 3.0 files give pixels, converted with the pixel size."""
        p = self.particles
        if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(p.columns):
            return self._numbers(["rlnOriginXAngst", "rlnOriginYAngst"])
        if {"rlnOriginX", "rlnOriginY"} <= set(p.columns):
            optics = self.optics()
            optics.require(self.path, "pixel_size")
            return self._numbers(["rlnOriginX", "rlnOriginY"]) * optics.pixel_size[:, None]
        return np.zeros((len(p), 2))

    def _numbers(self, labels: list[str]) -> np.ndarray:
        """(N, len(labels)) float64 columns; a value that is not a finite number is named by label and row."""
        out = np.empty((len(self.particles), len(labels)))
        for j, label in enumerate(labels):
            out[:, j] = pd.to_numeric(self.particles[label], errors="coerce").to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(out[:, j]))
            if bad.size:
                raise InputError(f"{label} is not a number", self.path, int(bad[0]) + 1)
        return out

    def with_particles(self, particles: pd.DataFrame) -> "ParticleStar":
        """The same file with another particle table (a subset, or extra columns)."""
        blocks = dict(self.blocks)
        blocks[self.particles_block] = particles
        return ParticleStar(self.path, blocks, self.particles_block, self.version)

    def with_columns(self, columns: Mapping[str, np.ndarray | pd.Series | list]) -> "ParticleStar":
        """Add or replace per-particle columns; new ones go after the existing ones, input columns are kept."""
        particles = self.particles.copy()
        for name, values in columns.items():
            values = np.asarray(values)
            if len(values) != len(particles):
                raise ValueError(f"column {name}: {len(values)} values for {len(particles)} particles")
            particles[name] = values
        return self.with_particles(particles)

    def subset(self, mask_or_index: np.ndarray) -> "ParticleStar":
        """Keep the rows selected by a boolean mask or integer positions, in input order."""
        sel = np.asarray(mask_or_index)
        rows = np.flatnonzero(sel) if sel.dtype == bool else np.sort(sel)
        return self.with_particles(self.particles.iloc[rows].reset_index(drop=True))


def _read_version(path: Path) -> int | None:
    with open(path, "r", errors="replace") as fh:
        for _ in range(200):  # the version line comes before the first data block
            line = fh.readline()
            if not line:
                break
            m = _VERSION_RE.match(line.strip())
            if m:
                return int(m.group(1))
            if line.startswith("data_"):
                break
    return None


def read_star(path: str | Path) -> ParticleStar:
    """Read a particle STAR file; raise :class:`InputError` naming the file for anything unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError("STAR file not found", path)
    if path.is_dir():
        raise InputError("is a directory, not a STAR file", path)
    if path.stat().st_size == 0:
        raise InputError("STAR file is empty", path)
    if _is_image_file(path):
        raise InputError("this is an image stack; give the particles STAR file (the .star that names its images)",
                         path)
    cr_line = lone_carriage_return_line(path)
    if cr_line is not None:
        raise InputError(f"line {cr_line} holds a carriage return without a line feed (a corrupt file?)", path)
    # starfile reads lines through the global ``linecache`` and clears it only when parsing succeeds: after a
    # failure the old text would be served for this path again, even once the file has been fixed or replaced.
    # This and the checks for a lone CR and for text that is not UTF-8 rest on how starfile reads lines, pinned
    # by tests/io/test_starfile_reader_assumptions.py; setup.cfg bounds starfile to the versions tested.
    linecache.clearcache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises a variety of pandas/parser errors on broken loops
        # pandas' messages end with a newline or run over several lines; the error must stay one line.
        why = " ".join(str(exc).split()) or "no details"
        raise InputError(f"cannot parse STAR file ({type(exc).__name__}: {why})", path) from exc
    finally:
        linecache.clearcache()
    if not blocks:
        raise InputError(f"no data blocks found ({why_not_utf8(path) or 'not a STAR file?'})", path)

    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame) and block.columns.has_duplicates:
            twice = block.columns[block.columns.duplicated()][0]
            # Every later lookup of that label would get a table instead of a column.
            raise InputError(f"data_{name} has the column {twice} more than once", path)
    particles_block = _find_particle_block(blocks, path)
    table = blocks[particles_block]
    if len(table) == 0:
        raise InputError(f"particle table data_{particles_block} has no rows", path)
    if "rlnImageName" not in table.columns:
        raise InputError(f"particle table data_{particles_block} has no rlnImageName column", path)
    star = ParticleStar(path, dict(blocks), particles_block, _read_version(path))
    _check_optics_groups(star)
    return star


def _is_image_file(path: Path) -> bool:
    """An MRC file by its header (whatever its name), or a file named as a stack that is not STAR text."""
    with open(path, "rb") as fh:
        head = fh.read(212)
    if head[208:212] == _MRC_MAP:
        return True
    return path.suffix.lower() in STACK_SUFFIXES and b"data_" not in head and b"\0" in head


def _find_particle_block(blocks: dict, path: Path) -> str:
    for name in PARTICLE_BLOCK_NAMES:
        if isinstance(blocks.get(name), pd.DataFrame):
            return name
    # Otherwise: the first loop with image names (e.g. a block named by another tool).
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame) and "rlnImageName" in block.columns:
            return name
    found = ", ".join(f"data_{k}" for k in blocks) or "none"
    raise InputError(f"no particle table (data_particles) found; blocks: {found}", path)


def _group_numbers(table: pd.DataFrame, path: Path, block: str) -> np.ndarray:
    """``rlnOpticsGroup`` of a table as int64; anything but whole numbers is named by row."""
    raw = table["rlnOpticsGroup"]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= 2**31))
    if bad.size:
        row = int(bad[0])
        value = raw.iloc[row]
        shown = repr(value) if isinstance(value, str) else str(value)  # 'abc', '' or nan, not np.float64(nan)
        raise InputError(f"data_{block}: rlnOpticsGroup {shown} is not an optics group number", path, row + 1)
    return values.astype(np.int64)


def _check_optics_groups(star: ParticleStar) -> None:
    optics = star.optics_table
    parts = star.particles
    if "rlnOpticsGroup" not in parts.columns:
        return
    groups = _group_numbers(parts, star.path, star.particles_block)
    if optics is None:
        return
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("data_optics has no rlnOpticsGroup column", star.path)
    listed = _group_numbers(optics, star.path, OPTICS_BLOCK)
    uniq, counts = np.unique(listed, return_counts=True)
    if (counts > 1).any():
        # Two rows for one group would make its voltage, Cs and pixel size ambiguous.
        raise InputError(f"data_optics lists optics group {int(uniq[counts > 1][0])} more than once", star.path)
    bad = np.flatnonzero(~np.isin(groups, listed))
    if bad.size:
        raise InputError(
            f"rlnOpticsGroup {groups[bad[0]]} is not in data_optics (groups: {sorted(uniq.tolist())})",
            star.path,
            int(bad[0]) + 1,
        )


def _column(table: pd.DataFrame, labels: tuple[str, ...]) -> pd.Series | None:
    for label in labels:
        if label in table.columns:
            return pd.to_numeric(table[label], errors="coerce")
    return None


def _resolve_optics(star: ParticleStar) -> Optics:
    parts = star.particles
    n = len(parts)
    optics = star.optics_table
    if optics is not None and "rlnOpticsGroup" in parts.columns:
        group = _group_numbers(parts, star.path, star.particles_block)
        by_group = optics.set_index(_group_numbers(optics, star.path, OPTICS_BLOCK))
        per_particle = by_group.reindex(group)
    else:
        # RELION 3.0: optics values are particle columns; one implicit group.
        group = (
            _group_numbers(parts, star.path, star.particles_block)
            if "rlnOpticsGroup" in parts.columns
            else np.ones(n, np.int64)
        )
        per_particle = pd.DataFrame(index=range(n))

    values: dict[str, np.ndarray | None] = {}
    missing: dict[str, list[int]] = {}
    for name, labels in _OPTICS_LABELS.items():
        # A particle-level column overrides the optics group (RELION allows this for e.g. pixel size in 3.0).
        col = _column(parts, labels)
        if col is None:
            col = _column(per_particle, labels)
            if col is not None:
                col = col.reset_index(drop=True)
        if col is None and name == "pixel_size":
            col = _pixel_size_from_magnification(parts)
        if col is None and name == "amplitude_contrast":
            col = pd.Series(np.full(n, DEFAULT_AMPLITUDE_CONTRAST))
        if col is None:
            values[name] = None
            continue
        arr = col.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr) | ((arr <= 0) if name in ("voltage", "pixel_size") else False))
        if bad.size:
            missing[name] = (bad + 1).tolist()
        values[name] = arr
    return Optics(group=group, missing=missing, **values)


def _pixel_size_from_magnification(parts: pd.DataFrame) -> pd.Series | None:
    """RELION 3.0 pixel size: detector pixel (µm) × 10⁴ / magnification."""
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(parts.columns):
        det = pd.to_numeric(parts["rlnDetectorPixelSize"], errors="coerce")
        mag = pd.to_numeric(parts["rlnMagnification"], errors="coerce")
        return det * 1e4 / mag
    return None


def write_star(star: ParticleStar | Mapping[str, pd.DataFrame | dict], path: str | Path, version: int | None = None) -> Path:
    """Write blocks to ``path`` atomically, each preceded by RELION's ``# version`` line.

    ``version`` defaults to the input file's (30001 when it had none, since we always write a
    3.1-style file when there is an optics table; a 3.0-style file keeps no version line).
    Floats are written as the shortest text that reads back to the same double (and always with a
    decimal point or exponent), so a read/write/read round trip is lossless and floats stay floats.
    """
    if isinstance(star, ParticleStar):
        blocks = star.blocks
        if version is None:
            version = star.version if star.version is not None else (VERSION_31 if star.optics_table is not None else None)
    else:
        blocks = dict(star)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(star_text(blocks, version))
    return path
