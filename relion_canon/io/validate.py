"""Summarise a particle file and find every problem in it that would stop a job later, or make it lie.

This is what ``relion-canon info`` prints; it collects problems instead of stopping at the first, so a
user can fix a file in one go. The job applies the very same checks before it starts
(:func:`check_job_input`, called by :func:`relion_canon.job.run_job`, so ``run``, the RELION External job and
the cryoSPARC job alike) and refuses the first problem; what is only suspicious (rows repeated, one image named
by several rows) is a warning in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from relion_canon.errors import InputError
from relion_canon.io.particles import is_cryosparc, read_particles
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import STACK_SUFFIXES, ParticleStar

MAX_ROWS_LISTED = 5  # per kind of pixel problem; the count says how many more
# Defocus in Å; above this (10 µm) a value is not a defocus RELION's CTF means (µm or nm written as Å, a
# corrupted column), and a CTF-based weight of it is no longer finite.
MAX_DEFOCUS_A = 1e5
DEFOCUS_LABELS = ("rlnDefocusU", "rlnDefocusV")
# Columns the job reads as numbers: any text in them is named by row, even when the column is mostly text.
NUMBER_LABELS = (*DEFOCUS_LABELS, "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor",
                 "rlnAnglePsi", "rlnAngleRot", "rlnAngleTilt", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst",
                 "rlnOriginYAngst", "rlnClassNumber", "rlnRandomSubset", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")
log = logging.getLogger(__name__)


@dataclass
class Report:
    path: Path
    kind: str  # "STAR (RELION 3.1)", "MRC stack", ...
    n_particles: int = 0
    box: int | None = None
    pixel_sizes: list[float] = field(default_factory=list)
    optics_groups: list[str] = field(default_factory=list)
    defocus_range_um: tuple[float, float] | None = None
    stacks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # suspicious but usable: the job goes on, saying so
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "n_particles": self.n_particles,
            "box": self.box,
            "pixel_sizes_A": self.pixel_sizes,
            "optics_groups": self.optics_groups,
            "defocus_range_um": list(self.defocus_range_um) if self.defocus_range_um else None,
            "n_stacks": len(self.stacks),
            "stacks": self.stacks,
            "problems": self.problems,
            "warnings": self.warnings,
            "notes": self.notes,
            "ok": self.ok,
        }

    def format(self, max_stacks: int = 5, max_problems: int = 10) -> str:
        lines = [f"{self.path}: {self.kind}", f"  particles      {self.n_particles}"]
        if self.box is not None:
            lines.append(f"  box            {self.box} px")
        if self.pixel_sizes:
            lines.append("  pixel size     " + ", ".join(f"{p:g} Å" for p in self.pixel_sizes))
        if self.optics_groups:
            lines.append(f"  optics groups  {len(self.optics_groups)}: " + ", ".join(self.optics_groups))
        if self.defocus_range_um:
            lo, hi = self.defocus_range_um
            lines.append(f"  defocus        {lo:.3f} – {hi:.3f} µm")
        if self.stacks:
            shown = ", ".join(self.stacks[:max_stacks])
            more = f" (+{len(self.stacks) - max_stacks} more)" if len(self.stacks) > max_stacks else ""
            lines.append(f"  stacks         {len(self.stacks)}: {shown}{more}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        if self.problems:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines.extend(f"  ERROR: {p}" for p in self.problems[:max_problems])
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (--json lists all)")
        else:
            lines.append("  no problems found")
        return "\n".join(lines)


def inspect_file(
    path: str | Path,
    project_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    scan_pixels: bool = True,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Summarise and validate a particle STAR file or an MRC stack.

    ``progress`` is called with the number of images scanned after each batch.
    """
    path = Path(path)
    if path.suffix.lower() in STACK_SUFFIXES:
        report = Report(path, "MRC stack")
        try:
            source = ParticleSource.from_stack(path, strict=False, check_finite=False)
        except InputError as exc:
            report.problems.append(str(exc))
            return report
    else:
        report = Report(path, "STAR")
        try:
            star = read_particles(path, project_dir=project_dir)
        except InputError as exc:
            report.problems.append(str(exc))
            return report
        if is_cryosparc(path):
            report.kind = "cryoSPARC particles .cs"
        return inspect_star(star, project_dir, data_dir, scan_pixels, batch_size, progress, report)

    _inspect_source(source, None, report, scan_pixels, batch_size, progress)
    return report


def inspect_star(star: ParticleStar, project_dir: str | Path | None = None, data_dir: str | Path | None = None,
                 scan_pixels: bool = True, batch_size: int = 512, progress: Callable[[int], None] | None = None,
                 report: Report | None = None) -> Report:
    """Summarise and validate a particle table already read (a STAR file, or a ``.cs`` read as one)."""
    if report is None:
        report = Report(star.path, "")
    if not report.kind or report.kind == "STAR":
        report.kind = f"STAR (RELION {star.generation} particles, data_{star.particles_block or '<unnamed>'})"
    _check_star(star, report)
    _check_rows(star, report)
    source = ParticleSource.from_star(star, project_dir, data_dir, strict=False, check_finite=False)
    _inspect_source(source, star, report, scan_pixels, batch_size, progress)
    return report


def _inspect_source(source: ParticleSource, star: ParticleStar | None, report: Report, scan_pixels: bool,
                    batch_size: int, progress: Callable[[int], None] | None) -> None:
    report.n_particles = len(source)
    report.box = source.box
    report.stacks = [s.name for s in source.stacks]
    report.problems.extend(str(p) for p in source.problems)
    if star is not None:
        _check_box_against_optics(star, source, report)
    if scan_pixels and not source.problems:
        _scan_pixels(source, report, batch_size, progress)
    source.close()


def check_job_input(particles: str | Path | ParticleStar, config: Any, passthrough: str | Path | None = None,
                    project_dir: str | Path | None = None, scan_pixels: bool = True) -> None:
    """Everything a job's input and options must pass before the job starts: the options against the table
    (:func:`~relion_canon.options.check_config`), the checks ``info`` makes on the table, the stacks and every
    image, and the options against the data (a box no larger than the particles'). Raises the first problem as
    one :class:`InputError` line (with how many more there are); logs each warning. Reads the images once."""
    from relion_canon.options import OptionError, check_config

    check_config(config)
    if getattr(config, "ref", None):  # the reference map: the file, and against the other options
        from relion_canon.analysis.orientation.reference import check_reference

        check_reference(config)
    star = read_particles(particles, passthrough, project_dir)
    report = inspect_star(star, project_dir, scan_pixels=scan_pixels)
    if report.problems:
        more = len(report.problems) - 1
        hint = f" (and {more} more problem{'s' if more > 1 else ''}: `relion-canon info` lists them)" if more else ""
        raise InputError(report.problems[0] + hint)
    for warning in report.warnings:
        log.warning(f"Warning: {warning}")
    box = getattr(config, "box", None)
    if box is not None and report.box is not None and box > report.box:
        raise OptionError(f"--box {box}: larger than the particles ({report.box} px): give at most "
                          f"{report.box}, or leave it empty to work at the particles' box")


def _check_star(star: ParticleStar, report: Report) -> None:
    optics = star.optics()
    if optics.pixel_size is not None:
        report.pixel_sizes = sorted({round(float(p), 6) for p in optics.pixel_size[np.isfinite(optics.pixel_size)]})
    table = star.optics_table
    if table is not None and "rlnOpticsGroupName" in table.columns:
        report.optics_groups = table["rlnOpticsGroupName"].astype(str).tolist()
    elif table is not None:
        report.optics_groups = [str(g) for g in table["rlnOpticsGroup"]]

    labels = {"voltage": "rlnVoltage", "cs": "rlnSphericalAberration", "pixel_size": "rlnImagePixelSize"}
    for name, label in labels.items():
        if getattr(optics, name) is None:
            report.problems.append(f"{star.path}: missing optics value {name} ({label}) for every particle")
        elif optics.missing.get(name):
            rows = optics.missing[name]
            report.problems.append(
                f"{star.path}, row {rows[0]}: missing or invalid optics value {name} ({label})"
                + (f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else "")
            )
    if not _has_any(star, ("rlnAmplitudeContrast",)):
        report.notes.append("no rlnAmplitudeContrast: 0.1 is assumed")

    p = star.particles
    _check_numbers(star, report)
    if "rlnDefocusU" in p.columns:
        du = pd.to_numeric(p["rlnDefocusU"], errors="coerce").to_numpy(np.float64)
        dv = pd.to_numeric(p["rlnDefocusV"], errors="coerce").to_numpy(np.float64) if "rlnDefocusV" in p.columns else du
        both = np.concatenate([du, dv])
        if np.isfinite(both).any():
            report.defocus_range_um = (float(np.nanmin(both)) / 1e4, float(np.nanmax(both)) / 1e4)
        for label, values in (("rlnDefocusU", du), ("rlnDefocusV", dv if "rlnDefocusV" in p.columns else None)):
            if values is None:
                continue
            with np.errstate(invalid="ignore"):
                _rows_problem(report, star.path, np.flatnonzero(np.isfinite(values) & (values <= 0)), label, values,
                              "is not a positive defocus (Å, underfocus positive)")
                _rows_problem(report, star.path, np.flatnonzero(np.isfinite(values) & (values > MAX_DEFOCUS_A)),
                              label, values, f"Å is over {MAX_DEFOCUS_A:g} Å (10 µm): not a defocus in Å")
    else:
        report.notes.append("no rlnDefocusU/V: CTF unknown (CTF-aware options will refuse this file)")


def _rows_problem(report: Report, path: Path, rows: np.ndarray, label: str, values: Any, what: str) -> None:
    """One problem for every row of ``rows`` (0-based): the first named with its value, the rest counted."""
    if rows.size == 0:
        return
    first = int(rows[0])
    value = values[first] if not isinstance(values, pd.Series) else values.iloc[first]
    shown = repr(value) if isinstance(value, str) else f"{float(value):g}"
    more = f" (and {rows.size - 1} more row{'s' if rows.size > 2 else ''})" if rows.size > 1 else ""
    report.problems.append(f"{path}, row {first + 1}, column {label}: {shown} {what}{more}")


def _check_numbers(star: ParticleStar, report: Report) -> None:
    """Text or a non-finite value where the job needs a number: a column the job reads as numbers, or a column
    whose other values are numbers (text there is a broken row), named by row and column."""
    tables = [(star.particles, "")]
    if star.optics_table is not None:
        tables.append((star.optics_table, "data_optics "))
    for table, where in tables:
        for label in table.columns:
            column = table[label]
            if column.dtype.kind in "iu":
                continue
            numbers = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
            finite = np.isfinite(numbers)
            needed = label in NUMBER_LABELS
            if not needed and (column.dtype.kind != "O" or finite.sum() <= len(column) // 2):
                continue  # a text column (names), or numbers only
            bad = np.flatnonzero(~finite)
            if bad.size:
                _rows_problem(report, star.path, bad, f"{where}{label}" if where else label, column,
                              "is not a number")


def _check_rows(star: ParticleStar, report: Report) -> None:
    """Rows that repeat one another, or name the same image: a warning with counts; every row naming one image
    (a table whose image column was filled down, say) is a problem."""
    p = star.particles
    if len(p) < 2:
        return
    repeated = int(p.astype(str).duplicated().sum())
    if repeated:
        report.warnings.append(f"{star.path}: {repeated} row{'s' if repeated > 1 else ''} repeat an earlier row "
                               "exactly (the same particle counted twice?)")
    names = p["rlnImageName"].astype(str).str.strip()
    counts = names.value_counts()
    if len(counts) == 1:
        report.problems.append(f"{star.path}, rows 1-{len(p)}: every row names the same image {counts.index[0]}")
        return
    shared = counts[counts > 1]
    if len(shared):
        name = shared.index[0]
        rows = np.flatnonzero((names == name).to_numpy()) + 1
        report.warnings.append(
            f"{star.path}: {len(shared)} image{'s are' if len(shared) > 1 else ' is'} named by more than one row "
            f"({int(shared.sum())} rows in all; e.g. {name} in rows {', '.join(str(r) for r in rows[:MAX_ROWS_LISTED])})")


def _has_any(star: ParticleStar, labels: tuple[str, ...]) -> bool:
    tables = [star.particles] + ([star.optics_table] if star.optics_table is not None else [])
    return any(label in t.columns for t in tables for label in labels)


def _check_box_against_optics(star: ParticleStar, source: ParticleSource, report: Report) -> None:
    table = star.optics_table
    if table is None or "rlnImageSize" not in table.columns or source.box is None:
        return
    for _, row in table.iterrows():
        declared = pd.to_numeric(pd.Series([row["rlnImageSize"]]), errors="coerce").iloc[0]
        if not np.isfinite(declared):
            continue  # named by _check_numbers
        declared = int(declared)
        if declared != source.box:
            group = row.get("rlnOpticsGroupName", row.get("rlnOpticsGroup"))
            report.problems.append(
                f"{star.path}: optics group {group} declares rlnImageSize {declared} but the images are {source.box} px"
            )


def _scan_pixels(source: ParticleSource, report: Report, batch_size: int, progress) -> None:
    nonfinite: list[int] = []
    constant: list[int] = []
    first_row_of: dict[bytes, int] = {}  # image content -> first row showing it
    copies: list[tuple[int, int]] = []  # (row, the earlier row it copies), 1-based
    seen: set[tuple[int, int]] = set()  # (stack, index) of the images hashed
    for idx, images in source.iter_batches(batch_size):
        flat = images.reshape(len(idx), -1)
        finite = np.isfinite(flat).all(axis=1)
        nonfinite.extend((idx[~finite] + 1).tolist())
        with np.errstate(invalid="ignore"):
            flat_ok = finite & (flat.max(axis=1) == flat.min(axis=1))
        constant.extend((idx[flat_ok] + 1).tolist())
        # A fingerprint, not the whole image: ~1,000 pixels spread over it and the exact sum. Hashing every pixel
        # would cost three times the reading; two different particle images agree on these only by being copies.
        step = max(1, flat.shape[1] // 1024)
        with np.errstate(invalid="ignore", over="ignore"):
            prints = np.concatenate([flat[:, ::step], flat.sum(axis=1, dtype=np.float64)[:, None].view(np.float32)],
                                    axis=1)
        for row, image, usable in zip(idx.tolist(), prints, finite & ~flat_ok):
            # One image named by several rows is _check_rows' warning; here only copies under other names count.
            key = (int(source.stack_of[row]), int(source.index[row]))
            if usable and key not in seen:
                seen.add(key)
                digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
                earlier = first_row_of.setdefault(digest, row + 1)
                if earlier != row + 1:
                    copies.append((row + 1, earlier))
        if progress:
            progress(len(idx))
    origin = source.origin
    for rows, what in ((nonfinite, "NaN or infinite pixels"), (constant, "a constant image (no signal, e.g. all zero)")):
        if rows:
            listed = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
            more = f" and {len(rows) - MAX_ROWS_LISTED} more" if len(rows) > MAX_ROWS_LISTED else ""
            report.problems.append(f"{origin}, row {rows[0]}: {what} (rows {listed}{more})")
    if copies and len(first_row_of) == 1 and not constant:
        report.problems.append(f"{origin}, rows 1-{len(source)}: every image is the same (no particles to tell "
                               "apart)")
    elif copies:
        # Same pixels under different rows: one particle extracted twice, or a stack written with copies.
        row, earlier = copies[0]
        report.warnings.append(f"{origin}: {len(copies)} image{'s' if len(copies) > 1 else ''} repeat an earlier "
                               f"image pixel for pixel (e.g. row {row} = row {earlier})")
