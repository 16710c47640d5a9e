"""The STAR tables of a simulated set: optics, the particles RELION reads, and the ground truth beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relion_canon.io.ground_truth import GROUND_TRUTH_STAR
from relion_canon.io.imagename import format_image_name
from relion_canon.simulate.config import SimulationConfig
from relion_canon.simulate.junk import NOT_JUNK
from relion_canon.simulate.plan import Plan

PARTICLES_STAR = "particles.star"
PARTICLES_STACK = "particles.mrcs"
CLEAN_STACK = "ground_truth_clean.mrcs"
SIMULATION_JSON = "simulation.json"
OUTPUT_FILES = (PARTICLES_STACK, CLEAN_STACK, GROUND_TRUTH_STAR, SIMULATION_JSON, PARTICLES_STAR)


def project_relative(out_dir: str | Path) -> str:
    """The output folder as RELION will look for it: relative to the project directory (the working directory)
    when it lies inside it, absolute otherwise. Readers fall back to the STAR file's folder, so the set still
    reads after being moved."""
    out = Path(out_dir).resolve()
    try:
        return out.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return out.as_posix()


def optics_table(config: SimulationConfig) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [float(config.amplitude_contrast)],
            "rlnSphericalAberration": [float(config.cs)],
            "rlnVoltage": [float(config.voltage)],
            "rlnImagePixelSize": [float(config.pixel_size)],
            "rlnImageSize": [int(config.box)],
            "rlnImageDimensionality": [2],
        }
    )


def _ctf_columns(config: SimulationConfig, plan: Plan) -> dict[str, np.ndarray]:
    """The CTF columns RELION reads; none when the set has no CTF."""
    if not config.ctf:
        return {}
    ctf_cols = {
        "rlnDefocusU": plan["defocus_u"],
        "rlnDefocusV": plan["defocus_v"],
        "rlnDefocusAngle": plan["defocus_angle"],
    }
    if config.bfactor:
        ctf_cols["rlnCtfBfactor"] = np.full(config.n_particles, float(config.bfactor))
    return ctf_cols


def _truth_columns(config: SimulationConfig, plan: Plan, ctf_cols: dict[str, np.ndarray]) -> dict[str, object]:
    """Angles, origins, CTF and our labels (``rlnCanon*``), as simulated."""
    n = config.n_particles
    kind = plan["kind"]
    kind_names = np.array([config.junk_kinds[k] if k >= 0 else NOT_JUNK for k in kind], dtype=object)
    # The decoy's own orientation is its truth; every other particle keeps the drawn one.
    decoy = kind_names == "other_molecule"
    shows_view = np.isin(kind_names, (NOT_JUNK, "off_centre", "aggregate"))
    zeros = np.zeros(n)
    return {
        "rlnAngleRot": np.where(decoy, plan["j_rot"], plan["rot"]),
        "rlnAngleTilt": np.where(decoy, plan["j_tilt"], plan["tilt"]),
        "rlnAnglePsi": plan["psi"],
        "rlnOriginXAngst": plan["origin"][:, 0],
        "rlnOriginYAngst": plan["origin"][:, 1],
        "rlnDefocusU": ctf_cols.get("rlnDefocusU", zeros),
        "rlnDefocusV": ctf_cols.get("rlnDefocusV", zeros),
        "rlnDefocusAngle": ctf_cols.get("rlnDefocusAngle", zeros),
        **({"rlnCtfBfactor": ctf_cols["rlnCtfBfactor"]} if "rlnCtfBfactor" in ctf_cols else {}),
        "rlnOpticsGroup": 1,
        "rlnCanonIsJunk": (kind >= 0).astype(int),
        "rlnCanonJunkKind": kind_names,
        "rlnCanonViewId": np.where(shows_view, plan["view_id"], -1).astype(int),
    }


def star_tables(
    config: SimulationConfig, plan: Plan, folder: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ground truth, particles, optics) tables; image names point into ``folder`` (project-relative)."""
    idx = np.arange(config.n_particles)
    prefix = "" if folder in ("", ".") else folder + "/"
    names = [format_image_name(i, prefix + PARTICLES_STACK) for i in idx]
    mics = [f"Micrographs/mic{i // config.particles_per_micrograph + 1:06d}.mrc" for i in idx]
    ctf_cols = _ctf_columns(config, plan)
    particles = pd.DataFrame({"rlnImageName": names, "rlnMicrographName": mics, **ctf_cols, "rlnOpticsGroup": 1})
    gt = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": mics,
            **_truth_columns(config, plan, ctf_cols),
            "rlnCanonCleanImageName": [format_image_name(i, prefix + CLEAN_STACK) for i in idx],
        }
    )
    return gt, particles, optics_table(config)
