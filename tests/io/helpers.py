"""Small on-disk particle sets for I/O tests (written with mrcfile/plain text, not with the code under test)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np


def make_stack(path: Path, n: int = 10, box: int = 16, seed: int = 0, pixel_size: float = 2.0) -> np.ndarray:
    data = np.random.default_rng(seed).normal(size=(n, box, box)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = pixel_size
    return data


def make_star(path: Path, names: list[str], box: int = 16, pixel_size: float = 2.0, optics_extra: str = "") -> Path:
    lines = [
        "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2", "_rlnAmplitudeContrast #3", "_rlnSphericalAberration #4",
        "_rlnVoltage #5", "_rlnImagePixelSize #6", "_rlnImageSize #7", "_rlnImageDimensionality #8",
        f"1 opticsGroup1 0.1 2.7 300.0 {pixel_size} {box} 2", "", "# version 30001", "", "data_particles", "", "loop_",
        "_rlnImageName #1", "_rlnDefocusU #2", "_rlnDefocusV #3", "_rlnDefocusAngle #4", "_rlnOpticsGroup #5",
    ]
    lines += [f"{name} {10000 + 100 * i}.0 {9900 + 100 * i}.0 15.0 1" for i, name in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")
    return path
