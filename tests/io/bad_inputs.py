"""Particle sets with one thing wrong each, made from a small simulated set by editing its text and pixels (with
mrcfile and plain text, not with the code under test). Shared by the tests of `info`, `run` and the External job,
which must refuse (or warn about) each the same way, up front."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np

N = 40
BOX = 32

# case -> (what the one-line error, or the warning, must contain; True: refused, False: only a warning)
CASES: dict[str, tuple[str, bool]] = {
    "negative_defocus": ("row 5, column rlnDefocusU: -5000 is not a positive defocus", True),
    "zero_defocus": ("row 5, column rlnDefocusV: 0 is not a positive defocus", True),
    "huge_defocus": ("row 5, column rlnDefocusU: 1e+12 Å is over 100000 Å", True),
    "text_in_number": ("row 5, column rlnDefocusAngle: 'abc' is not a number", True),
    "one_image": ("rows 1-40: every row names the same image 000001@", True),
    "constant_images": ("row 4: a constant image (no signal, e.g. all zero) (rows 4, 8)", True),
    "identical_images": ("rows 1-40: every image is the same", True),
    "image_size": ("declares rlnImageSize 48 but the images are 32 px", True),
    "duplicate_rows": ("3 rows repeat an earlier row exactly", False),
}


def simulated_set(folder: Path) -> Path:
    """A 40-particle, 32 px simulated set in ``folder`` (image names relative to ``folder``'s parent, which
    must be the working directory when it is read); returns its particles.star."""
    from relion_canon.simulate import SimulationConfig, simulate_dataset

    cwd = os.getcwd()
    os.chdir(folder.parent)
    try:
        simulate_dataset(SimulationConfig(n_particles=N, box=BOX, junk_fraction=0.1, seed=5), Path(folder.name))
    finally:
        os.chdir(cwd)
    return folder / "particles.star"


def _rows(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if "@" in line and not line.startswith("_")]


def _set(lines: list[str], row: int, column: int, value: str) -> None:
    i = _rows(lines)[row]
    parts = lines[i].split()
    parts[column] = value
    lines[i] = "\t".join(parts)


def _write_stack(path: Path, data: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.set_image_stack()


def make_case(star: Path, case: str, out: Path) -> Path:
    """``star`` with the fault ``case`` (a key of :data:`CASES`) written to ``out`` (beside ``star``)."""
    lines = star.read_text().split("\n")
    # Particle columns of the simulated STAR: 0 image, 1 micrograph, 2 DefocusU, 3 DefocusV, 4 DefocusAngle.
    stack = star.parent / "particles.mrcs"
    prefix = f"{star.parent.name}/"
    if case == "negative_defocus":
        _set(lines, 4, 2, "-5000.0")
    elif case == "zero_defocus":
        _set(lines, 4, 3, "0.0")
    elif case == "huge_defocus":
        _set(lines, 4, 2, "1e12")
    elif case == "text_in_number":
        _set(lines, 4, 4, "abc")
    elif case == "one_image":
        for row in range(len(_rows(lines))):
            _set(lines, row, 0, f"000001@{prefix}particles.mrcs")
    elif case in ("constant_images", "identical_images"):
        data = mrcfile.read(stack).copy()
        if case == "constant_images":
            data[3], data[7] = 0.0, 1.5
        else:
            data[:] = data[0]
        name = f"{case}.mrcs"
        _write_stack(star.parent / name, data)
        lines = [line.replace(f"{prefix}particles.mrcs", f"{prefix}{name}") for line in lines]
    elif case == "image_size":
        i = next(i for i, line in enumerate(lines) if line.startswith("1\topticsGroup1"))
        parts = lines[i].split("\t")
        parts[6] = "48"
        lines[i] = "\t".join(parts)
    elif case == "duplicate_rows":
        rows = _rows(lines)
        for k in (1, 2, 3):
            lines[rows[10 + k]] = lines[rows[10]]
    else:
        raise KeyError(case)
    out.write_text("\n".join(lines))
    return out
