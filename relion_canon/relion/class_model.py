"""The job's classes as RELION's Select job takes a Class2D's: ``run_it000_model.star`` beside
``run_it000_data.star`` (and ``run_it000_optimiser.star`` for RELION 4.0 and 5.0).

How RELION finds them (pipeline_jobs.cpp and displayer.cpp of 3.1.3, 4.0.1 and 5.0.1):

* 3.1: Select's "Select classes from model.star" takes a node of type 8 (NODE_MODEL) and runs
  ``relion_display --gui --i X_model.star --allow_save --fn_parts Select/jobN/particles.star``. The displayer
  reads the ``model_classes`` table (the image in ``rlnReferenceImage``; the class number is the row number,
  so rows must be classes 1..K in order) and the particles from ``X_data.star`` (the name with
  ``_model.star`` replaced), optics and all; saving keeps the rows whose ``rlnClassNumber`` is a selected class.
* 4.0 / 5.0: the same input takes an optimiser node; the displayer reads ``rlnModelStarFile`` from the
  ``optimiser_general`` block of ``X_optimiser.star`` and the particles from ``X_data.star``.

Every name written into these files is as the job was given ``out_dir`` (project-relative under RELION), as
``relion_display`` runs from the project directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from relion_canon.analysis.class_summary import class_summaries
from relion_canon.io.atomic import atomic_path
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import header_pixel_size, open_stack, stack_shape, write_stack
from relion_canon.io.star import write_star
from relion_canon.relion.nodes import NodeKind

MODEL_STAR = "run_it000_model.star"
DATA_STAR = "run_it000_data.star"
OPTIMISER_STAR = "run_it000_optimiser.star"
# Only when the class numbers are not 1..K: RELION counts classes by row, so absent numbers need blank rows.
PADDED_STACK = "run_it000_classes.mrcs"
# What RELION's own model.star holds for a quantity it could not estimate (an empty class's accuracy).
NOT_MEASURED = 999.0
STAR_VERSION = 30001


@dataclass(frozen=True)
class ClassRow:
    """One row of ``model_classes``."""

    number: int
    image: str  # "N@stack"
    fraction: float
    accuracy_rot_deg: float
    accuracy_trans_A: float
    resolution_A: float
    is_junk: bool | None  # None: the job did not judge it


def has_class_model(class_numbers: np.ndarray | None, report: Mapping[str, Any]) -> bool:
    """Whether the job made one class average per class of its particles (``class_numbers``, their
    rlnClassNumber; None without), as it does per class with refinement."""
    averages = report.get("class_averages") or {}
    numbers = [int(c) for c in averages.get("classes", [])]
    if class_numbers is None or not numbers or min(numbers) < 1:
        return False
    present = set(np.unique(np.asarray(class_numbers)).astype(int).tolist())
    return present <= set(numbers)


def write_class_model(class_numbers: np.ndarray, particles_star: str | Path, out_dir: str | Path,
                      report: Mapping[str, Any]) -> dict[str, str]:
    """Write the model, data and optimiser STAR files for the job's particles (``particles_star``, its
    particles.star with rlnClassNumber ``class_numbers``) and the class averages the ``report`` names; returns
    their paths by role (``model``, ``data``, ``optimiser``, and ``stack`` for the images the model names).
    The data STAR file is a copy of ``particles_star``: the particles as they are, optics and all."""
    out_dir = Path(out_dir)
    stack, numbers = Path(report["class_averages"]["file"]), [int(c) for c in report["class_averages"]["classes"]]
    stack, position = _contiguous_stack(stack, numbers, out_dir / PADDED_STACK)
    with open_stack(stack) as m:
        box, pixel_size_A = stack_shape(m)[-1], header_pixel_size(m) or 0.0
    rows = class_rows(np.asarray(class_numbers).astype(int), stack, position, report.get("classes", {}))
    paths = {"model": out_dir / MODEL_STAR, "data": out_dir / DATA_STAR, "optimiser": out_dir / OPTIMISER_STAR}
    write_star(model_blocks(rows, box, pixel_size_A), paths["model"], STAR_VERSION)
    with atomic_path(paths["data"]) as tmp:
        shutil.copyfile(particles_star, tmp)
    write_star(optimiser_blocks(paths["model"], paths["data"]), paths["optimiser"], STAR_VERSION)
    return {**{role: path.as_posix() for role, path in paths.items()}, "stack": stack.as_posix()}


def _contiguous_stack(stack: Path, numbers: list[int], padded: Path) -> tuple[Path, dict[int, int]]:
    """The stack whose image k is class k+1 for k < max class, and class → its index there: the job's own
    when its classes are 1..K, else a copy with blank images for the absent numbers."""
    if numbers == list(range(1, len(numbers) + 1)):
        return stack, {c: c - 1 for c in numbers}
    with open_stack(stack) as m:
        images, pixel_size_A = np.array(m.data, dtype=np.float32).reshape(-1, *m.data.shape[-2:]), header_pixel_size(m)
    full = np.zeros((max(numbers), *images.shape[1:]), np.float32)
    for k, c in enumerate(numbers):
        full[c - 1] = images[k]
    return write_stack(padded, full, pixel_size_A or 0.0), {c: c - 1 for c in range(1, max(numbers) + 1)}


def class_rows(class_numbers: np.ndarray, stack: Path, position: Mapping[int, int],
               class_reports: Mapping[str, Mapping[str, Any]]) -> list[ClassRow]:
    """Classes 1..K in order (K the largest class in ``position``); a class the report lacks or without
    particles gets its counted fraction (0 when empty) and unmeasured accuracies, as RELION writes an empty
    class."""
    summaries = class_summaries(class_reports, len(class_numbers))
    rows = []
    for number in range(1, max(position) + 1):
        known = summaries.get(number)
        fraction = known.fraction if known else float(np.sum(class_numbers == number)) / max(len(class_numbers), 1)
        rows.append(ClassRow(
            number=number, image=format_image_name(position[number], stack.as_posix()), fraction=fraction,
            accuracy_rot_deg=_measured(known and known.accuracy_rot_deg),
            accuracy_trans_A=_measured(known and known.accuracy_trans_A),
            resolution_A=_measured(known and known.resolution_A), is_junk=known.is_junk if known else None,
        ))
    return rows


def _measured(value: float | None) -> float:
    return NOT_MEASURED if value is None or not np.isfinite(value) else float(value)


def model_blocks(rows: list[ClassRow], box: int, pixel_size_A: float) -> dict[str, Any]:
    """``model_general`` and ``model_classes`` with RELION 3.1's labels (4.0 and 5.0 read the same)."""
    general = {
        "rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2, "rlnOriginalImageSize": box,
        "rlnCurrentImageSize": box, "rlnPixelSize": pixel_size_A, "rlnIsHelix": 0,
        "rlnNrClasses": len(rows), "rlnNrBodies": 1, "rlnNrGroups": 1,
    }
    classes = pd.DataFrame({
        "rlnReferenceImage": [r.image for r in rows],
        "rlnClassDistribution": [r.fraction for r in rows],
        "rlnAccuracyRotations": [r.accuracy_rot_deg for r in rows],
        "rlnAccuracyTranslationsAngst": [r.accuracy_trans_A for r in rows],
        "rlnEstimatedResolution": [r.resolution_A for r in rows],
        # The class averages are centred: no class has an offset prior.
        "rlnClassPriorOffsetX": 0.0,
        "rlnClassPriorOffsetY": 0.0,
    })
    if any(r.is_junk is not None for r in rows):
        # Not a RELION label: 3.1 skips it with a warning, 4.0 and 5.0 keep it (and can show it).
        classes["rlnCanonClassIsJunk"] = [int(bool(r.is_junk)) for r in rows]
    return {"model_general": general, "model_classes": classes}


def optimiser_blocks(model_star: Path, data_star: Path) -> dict[str, Any]:
    """What RELION 4.0 / 5.0's displayer reads from an optimiser STAR file to find the model."""
    root = model_star.as_posix()[: -len("_it000_model.star")]
    return {"optimiser_general": {"rlnOutputRootName": root, "rlnModelStarFile": model_star.as_posix(),
                                  "rlnExperimentalDataStarFile": data_star.as_posix()}}


def selection_node(version: str) -> tuple[str, NodeKind]:
    """The file (in the job's folder) and node kind a Select job of RELION ``version`` takes classes from."""
    if version == "3.1":
        return MODEL_STAR, NodeKind.CLASS_MODEL
    return OPTIMISER_STAR, NodeKind.OPTIMISER
