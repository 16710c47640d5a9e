"""Summarise a particle file and find every problem in it that would stop a job later.

This is what ``relion-canon info`` prints; it collects problems instead of stopping at the first, so a
user can fix a file in one go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.particles import is_cryosparc, read_particles
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import ParticleStar

MAX_ROWS_LISTED = 5  # per kind of pixel problem; the count says how many more


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
    if path.suffix.lower() in (".mrcs", ".mrc", ".st"):
        report = Report(path, "MRC stack")
        try:
            source = ParticleSource.from_stack(path, strict=False, check_finite=False)
        except InputError as exc:
            report.problems.append(str(exc))
            return report
        star = None
    else:
        report = Report(path, "STAR")
        try:
            star = read_particles(path, project_dir=project_dir)
        except InputError as exc:
            report.problems.append(str(exc))
            return report
        report.kind = f"STAR (RELION {star.generation} particles, data_{star.particles_block or '<unnamed>'})"
        if is_cryosparc(path):
            report.kind = "cryoSPARC particles .cs"
        _check_star(star, report)
        source = ParticleSource.from_star(star, project_dir, data_dir, strict=False, check_finite=False)

    report.n_particles = len(source)
    report.box = source.box
    report.stacks = [s.name for s in source.stacks]
    report.problems.extend(str(p) for p in source.problems)
    if star is not None:
        _check_box_against_optics(star, source, report)
    if scan_pixels and not source.problems:
        _scan_pixels(source, report, batch_size, progress)
    source.close()
    return report


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
    if "rlnDefocusU" in p.columns:
        du = np.asarray(p["rlnDefocusU"], dtype=np.float64)
        dv = np.asarray(p["rlnDefocusV"], dtype=np.float64) if "rlnDefocusV" in p.columns else du
        both = np.concatenate([du, dv])
        if np.isfinite(both).any():
            report.defocus_range_um = (float(np.nanmin(both)) / 1e4, float(np.nanmax(both)) / 1e4)
        bad = np.flatnonzero(~np.isfinite(du) | ~np.isfinite(dv))
        if bad.size:
            report.problems.append(f"{star.path}, row {bad[0] + 1}: defocus is not a number")
    else:
        report.notes.append("no rlnDefocusU/V: CTF unknown (CTF-aware options will refuse this file)")


def _has_any(star: ParticleStar, labels: tuple[str, ...]) -> bool:
    tables = [star.particles] + ([star.optics_table] if star.optics_table is not None else [])
    return any(label in t.columns for t in tables for label in labels)


def _check_box_against_optics(star: ParticleStar, source: ParticleSource, report: Report) -> None:
    table = star.optics_table
    if table is None or "rlnImageSize" not in table.columns or source.box is None:
        return
    for _, row in table.iterrows():
        declared = int(row["rlnImageSize"])
        if declared != source.box:
            group = row.get("rlnOpticsGroupName", row.get("rlnOpticsGroup"))
            report.problems.append(
                f"{star.path}: optics group {group} declares rlnImageSize {declared} but the images are {source.box} px"
            )


def _scan_pixels(source: ParticleSource, report: Report, batch_size: int, progress) -> None:
    nonfinite: list[int] = []
    constant: list[int] = []
    for idx, images in source.iter_batches(batch_size):
        flat = images.reshape(len(idx), -1)
        finite = np.isfinite(flat).all(axis=1)
        nonfinite.extend((idx[~finite] + 1).tolist())
        with np.errstate(invalid="ignore"):
            flat_ok = finite & (flat.max(axis=1) == flat.min(axis=1))
        constant.extend((idx[flat_ok] + 1).tolist())
        if progress:
            progress(len(idx))
    origin = source.origin
    for rows, what in ((nonfinite, "NaN or infinite pixels"), (constant, "a constant image (no signal, e.g. all zero)")):
        if rows:
            listed = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
            more = f" and {len(rows) - MAX_ROWS_LISTED} more" if len(rows) > MAX_ROWS_LISTED else ""
            report.problems.append(f"{origin}, row {rows[0]}: {what} (rows {listed}{more})")
