"""The per-particle plan: every random parameter of a simulated set, drawn up front in a fixed order.

The order of the draws is part of the format: a set is regenerated bit-identically from its configuration
only if each step below draws the same numbers in the same order as before. Add new draws at the end.
"""

from __future__ import annotations

import numpy as np

from relion_canon.geometry import wrap_deg
from relion_canon.simulate.config import SimulationConfig
from relion_canon.simulate.junk import DISPLACEMENT_RANGE

Plan = dict[str, np.ndarray]


def uniform_sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) of directions uniform on the sphere."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return rot, tilt


def _balanced(rng: np.random.Generator, n_classes: int, n: int) -> np.ndarray:
    """n labels in 0..n_classes-1, as equal in number as possible, in random order."""
    return rng.permutation(np.resize(np.arange(n_classes), n))


def _draw_views(rng: np.random.Generator, config: SimulationConfig, n: int) -> Plan:
    """Each particle's (rot, tilt), its view id (-1 for uniform SO(3)) and the views themselves."""
    if config.views == "uniform":
        rot, tilt = uniform_sphere(rng, n)
        view_id = np.full(n, -1)
        view_rot = view_tilt = np.zeros(0)
    else:
        k = int(config.views)
        if k == 1:
            view_rot, view_tilt = np.array([config.rot], float), np.array([config.tilt], float)
        else:
            view_rot, view_tilt = uniform_sphere(rng, k)
        view_id = _balanced(rng, k, n)
        rot, tilt = view_rot[view_id], view_tilt[view_id]
    return {
        "view_rot": view_rot,
        "view_tilt": view_tilt,
        "rot": wrap_deg(rot),
        "tilt": np.asarray(tilt, dtype=np.float64),
        "view_id": view_id,
    }


def _draw_psi_and_origin(rng: np.random.Generator, config: SimulationConfig, n: int) -> Plan:
    # Both psi streams are drawn whatever the setting, so the later draws do not depend on it.
    psi_u = rng.uniform(-180.0, 180.0, n)
    psi_n = rng.normal(0.0, 1.0, n)
    if config.psi is not None:
        psi = np.full(n, float(config.psi))
    elif config.psi_sigma is None:
        psi = psi_u
    else:
        psi = psi_n * config.psi_sigma
    origin = rng.normal(0.0, 1.0, (n, 2)) * config.shift_sigma + 0.0  # no "-0.0" in the STAR file
    return {"psi": wrap_deg(psi), "origin": origin}


def _draw_ctf(rng: np.random.Generator, config: SimulationConfig, n: int) -> Plan:
    if config.defocus_values:
        values = np.asarray(config.defocus_values, dtype=np.float64)
        defocus = values[_balanced(rng, len(values), n)]
    else:
        lo, hi = config.defocus_range
        defocus = rng.uniform(lo, hi, n)
    astig_angle = rng.uniform(0.0, 180.0, n)
    return {
        "defocus_u": defocus + config.astigmatism / 2,
        "defocus_v": defocus - config.astigmatism / 2,
        "defocus_angle": astig_angle,
    }


def _draw_junk_kinds(rng: np.random.Generator, config: SimulationConfig, n: int) -> Plan:
    """Which particles are junk, and of which kind (index into ``config.junk_kinds``; -1: a good particle)."""
    n_junk = int(round(config.junk_fraction * n))
    junk_rows = rng.permutation(n)[:n_junk]
    kind = np.full(n, -1)
    if n_junk:
        kind[junk_rows] = _balanced(rng, len(config.junk_kinds), n_junk)
    return {"kind": kind}


def _draw_junk_parameters(rng: np.random.Generator, config: SimulationConfig, n: int) -> Plan:
    # Parameters only some junk kinds use; drawn for every particle so the stream never depends on the kinds.
    j_rot, j_tilt = uniform_sphere(rng, n)
    return {
        "j_rot": wrap_deg(j_rot),
        "j_tilt": j_tilt,
        "j_psi": rng.uniform(-180.0, 180.0, n),
        "j_dir": rng.uniform(0.0, 360.0, n),
        "j_dist": rng.uniform(*DISPLACEMENT_RANGE, n) * config.box,
        "edge_offset": rng.uniform(-0.3, 0.3, n) * config.box,
        "edge_width": rng.uniform(0.5, 2.0, n),
        "edge_step": rng.uniform(1.5, 4.0, n),
        "grad": rng.uniform(0.5, 1.5, n),
        "grad_dir": rng.uniform(0.0, 360.0, n),
    }


# In draw order; each step consumes the generator after the previous one.
_STEPS = (_draw_views, _draw_psi_and_origin, _draw_ctf, _draw_junk_kinds, _draw_junk_parameters)


def draw_plan(config: SimulationConfig) -> Plan:
    """Every per-particle random parameter, drawn in a fixed order from the configuration's seed."""
    n = config.n_particles
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    plan: Plan = {}
    for step in _STEPS:
        plan.update(step(rng, config, n))
    return plan
