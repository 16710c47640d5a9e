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


def reference_results_table(star, seed=0):
    """A result table as the job writes it with a reference map: classes 1 and 2 matched (3-D angles and
    priors, rlnCanonClassPsi the in-class angle), class 3 ambiguous and a few junk particles without a prior
    (RELION's 999), origins with the class centre; the columns come from the orientation step's own code."""
    from relion_canon.analysis.orientation.matching import ClassMatch
    from relion_canon.analysis.orientation.priors import particle_orientations

    rng = np.random.default_rng(seed)
    n = len(star)
    number = np.arange(n) % 3 + 1
    junk = np.arange(n) % 5 == 0
    classes = {k: np.flatnonzero(number == k) for k in (1, 2, 3)}
    matches = {1: ClassMatch(40.0, 175.5, -30.0, (0.5, -1.0), 0.9, 0.5, 0.0, 0.0, np.ones(9), 10.0, False, ""),
               2: ClassMatch(-120.0, 63.0, 150.0, (0.0, 0.0), 0.9, 0.5, 0.0, 0.0, np.ones(9), 10.0, False, "")}
    psi = rng.uniform(-180, 180, n)
    pixel = float(star.optics().pixel_size[0])
    oriented = particle_orientations(psi, rng.normal(0, 3, (n, 2)), pixel, classes, matches, junk)
    columns = oriented.columns()
    columns |= {"rlnClassNumber": number, "rlnOriginXAngst": oriented.origin_A[:, 0],
                "rlnOriginYAngst": oriented.origin_A[:, 1], "rlnCanonDefocus": rng.uniform(1e4, 2e4, n),
                "rlnParticleSelectZScore": junk * 3.0, "rlnCanonIsOutlier": junk.astype(int)}
    out = star.with_columns(columns)
    return out.with_particles(out.particles.iloc[rng.permutation(n)].reset_index(drop=True))
