"""`defocus_columns.estimate_defocus`: the fit to the reference when every particle has one, else paper B's."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.estimate.defocus_columns import estimate_defocus


def _latent(n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4))


def test_nothing_to_map_onto_gives_no_columns():
    out = estimate_defocus(_latent(), np.full(50, np.nan), None, None)
    assert out.columns == {} and out.report["method"] is None


def test_the_fit_is_used_when_every_particle_has_one():
    fit = np.linspace(8000.0, 20000.0, 50)
    out = estimate_defocus(_latent(), fit, fit + 50.0, None)
    assert out.report["method"] == "ctf_fit_to_reference"
    np.testing.assert_array_equal(out.columns["rlnCanonDefocus"], fit)
    np.testing.assert_allclose(out.columns["rlnParticleFigureOfMerit"], np.expm1(fit / 1e4))


def test_a_missing_fit_falls_back_to_the_latent_mapping():
    fit = np.linspace(8000.0, 20000.0, 50)
    fit[3] = np.nan
    out = estimate_defocus(_latent(), fit, None, (5000.0, 25000.0))
    assert out.report["method"] == "latent_radius_quantiles"
    np.testing.assert_array_equal(out.columns["rlnCanonDefocus"], out.columns["rlnCanonDefocusLatent"])
