"""Shared by the tests of relion_canon.io.cryosparc_files: the real fixtures' paths and a job's result table."""

from __future__ import annotations

import numpy as np

J2 = "formats/cryosparc/cryosparc_J2_particles_exported.cs"
J24 = "formats/cryosparc/cryosparc_P12_J24_001_particles.cs"
EMPIAR_CS = "formats/mixed/empiar_10076_7.cs"
EMPIAR_STAR = "formats/mixed/empiar_10076_7.star"


def results_table(star, seed=0):
    """A job's result table: the input columns plus our estimates, rows shuffled."""
    rng = np.random.default_rng(seed)
    n = len(star)
    psi = rng.uniform(-180, 180, n)
    out = star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi, "rlnCanonDefocus": rng.uniform(1e4, 2e4, n),
                             "rlnParticleFigureOfMerit": rng.uniform(0, 5, n),
                             "rlnParticleSelectZScore": rng.normal(size=n),
                             "rlnCanonIsOutlier": (np.arange(n) % 4 == 0).astype(int)})
    return out.with_particles(out.particles.iloc[rng.permutation(n)].reset_index(drop=True))
