"""The 3-D reference map the classes are matched against: checked before any work, then resampled to the
particles' working box and pixel size with the simulator's resampler (Fourier crop below the new Nyquist, then
a cubic spline), so that its projections and the class averages share one grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.mrc import read_map
from relion_canon.options import OptionError
from relion_canon.geometry.volume import resample_map


def check_reference(config: Any) -> None:
    """Refuse, in one line, a reference the orientation step could not use, before any work
    (:func:`relion_canon.io.validate.check_job_input` calls this): a missing or unreadable file, a map that is not
    a cube, an empty one, one without a voxel size (in its header or ``ref_pixel_size``), or options that leave no
    class averages in a known frame to match. The option table checks values only (it reads no file)."""
    path = getattr(config, "ref", None)
    if not path:
        return
    if not config.refine:
        raise OptionError("a reference map (--ref; RELION: Input 3D reference) needs the class averages that "
                          "refinement makes, and refinement is off (--no-refine; RELION param refine no)")
    if config.per_class:
        raise OptionError("a reference map (--ref; RELION: Input 3D reference) works on the job's own classes, "
                          "whose angles are in each class average's frame; it cannot be used with --per-class "
                          "(RELION param per_class)")
    data, header_apix = read_map(path)  # InputError naming the file: missing, unreadable, not a cube
    if not np.any(data):
        raise InputError("the reference map is empty (all zeros)", path)
    if config.ref_pixel_size is None and header_apix is None:
        raise InputError("the map header gives no voxel size; give it with --ref-pixel-size (RELION param "
                         "ref_pixel_size)", path)


def load_reference(path: str | Path, map_pixel_size: float | None, box: int, pixel_size_A: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The map at ``box``³ voxels of ``pixel_size_A`` (z, y, x), and what was done to it, for the report."""
    data, header_apix = read_map(path)
    apix = map_pixel_size if map_pixel_size is not None else header_apix
    if apix is None:
        raise InputError("the map header gives no voxel size; give it with --ref-pixel-size", path)
    volume = resample_map(data, apix, box, pixel_size_A)
    return volume, {"file": str(path), "map_box": int(data.shape[0]), "map_pixel_size_A": float(apix),
                    "box": int(box), "pixel_size_A": float(pixel_size_A)}
