"""Defocus from the latent radius (paper B eq. 7 and its quantile-mapping refinement) and the eq. 8 weight."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.defocus import defocus_from_radius, fit_defocus_mapping, weight_from_defocus
from relion_canon.analysis.latent_angle import polar_readout

LO, HI = 5_000.0, 25_000.0  # Å: paper B's 0.5-2.5 µm, the realistic benchmark set's range


def _rmse_um(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) / 1e4


def _defocus(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(LO, HI, n)


def test_linear_radius_with_range_both_methods():
    """Radius ∝ defocus, uniform defocus: eq. 7 and quantile mapping both recover it from the range alone."""
    d = _defocus(4000, np.random.default_rng(0))
    r = 0.3 + 2e-4 * d
    for method in ("quantile", "quartile"):
        est = defocus_from_radius(r, defocus_range=(LO, HI), method=method)
        assert _rmse_um(est, d) < 0.03, method
        assert est.min() >= LO and est.max() <= HI


def test_quantile_mapping_beats_eq7_on_a_curved_radius():
    """A monotone but curved radius-defocus relation (as a decoder may learn) defeats eq. 7's straight line
    through the quartiles; matching many quantiles does not care about the shape."""
    d = _defocus(4000, np.random.default_rng(1))
    r = np.exp(d / 8000.0)  # convex
    quantile = _rmse_um(defocus_from_radius(r, defocus_range=(LO, HI)), d)
    quartile = _rmse_um(defocus_from_radius(r, defocus_range=(LO, HI), method="quartile"), d)
    assert quantile < 0.03
    assert quartile > 0.1 and quantile < quartile / 3, (quantile, quartile)


def test_direction_from_reference():
    """The radius shrinking with defocus: 'auto' orients by the per-particle reference; forcing the paper's
    increasing assumption instead mirrors the defocus scale and fails."""
    rng = np.random.default_rng(2)
    d = _defocus(3000, rng)
    r = 5.0 - 1.5e-4 * d + 0.05 * rng.standard_normal(d.size)
    ref = d + 150.0 * rng.standard_normal(d.size)  # CTFFIND-like scatter about the truth
    mapping = fit_defocus_mapping(r, reference_defocus=ref)
    assert mapping.direction == "decreasing" and mapping.spearman < -0.9
    good = _rmse_um(mapping.apply(r), d)
    wrong = _rmse_um(defocus_from_radius(r, reference_defocus=ref, direction="increasing"), d)
    assert good < 0.08 and wrong > 0.6, (good, wrong)
    # Range only: nothing to orient by, so the paper's convention (increasing) is taken.
    assert fit_defocus_mapping(r, defocus_range=(LO, HI)).direction == "increasing"
    assert _rmse_um(defocus_from_radius(r, defocus_range=(LO, HI), direction="decreasing"), d) < 0.08


def test_cone_latent_end_to_end():
    """Paper B's setting: a noisy cone in a 4-D latent, radius read off the PCA plane by polar_readout,
    defocus matched to the STAR's CTFFIND values; the realistic-set target is rMSE ≤ 0.1 µm."""
    rng = np.random.default_rng(3)
    n = 5000
    d = _defocus(n, rng)
    t = rng.uniform(-np.pi, np.pi, n)
    rad = np.sqrt(d / 1e4)  # curved: sqrt, so eq. 7's straight line is only approximate
    pts = np.stack([rad * np.cos(t), rad * np.sin(t), rad, 0.05 * rng.standard_normal(n)], axis=1)
    pts[:, :3] += 0.02 * rng.standard_normal((n, 3))
    latent = pts @ np.linalg.qr(rng.standard_normal((4, 4)))[0] * 3.0 + 1.0
    _, radius = polar_readout(latent)
    ref = d + 100.0 * rng.standard_normal(n)
    est = defocus_from_radius(radius, reference_defocus=ref)
    err = _rmse_um(est, d)
    assert err < 0.1, err
    # The range alone (no per-particle reference) does almost as well on this uniform set.
    assert _rmse_um(defocus_from_radius(radius, defocus_range=(LO, HI)), d) < 0.1


def test_junk_left_out_of_the_fit_and_clipped():
    """Junk radii (far off the cone) shift every rank if fitted on; fit_mask keeps them out, and whatever
    their radius, their defocus stays inside the target's support."""
    rng = np.random.default_rng(4)
    n = 4000
    d = _defocus(n, rng)
    r = 1.0 + 1e-4 * d + 0.01 * rng.standard_normal(n)
    junk = rng.random(n) < 0.15
    r[junk] = rng.uniform(5.0, 50.0, junk.sum())  # all beyond the largest true radius
    masked = defocus_from_radius(r, defocus_range=(LO, HI), fit_mask=~junk)
    unmasked = defocus_from_radius(r, defocus_range=(LO, HI))
    good, bad = _rmse_um(masked[~junk], d[~junk]), _rmse_um(unmasked[~junk], d[~junk])
    assert good < 0.05 and bad > 1.5 * good, (good, bad)
    assert masked.min() >= LO and masked.max() <= HI
    np.testing.assert_allclose(masked[junk], HI)


def test_discrete_reference_values():
    """vaegan-sim: six defocus values 0.5-3.0 µm. Matching the reference's own distribution puts particles
    on the right values; the uniform-range assumption of eq. 7 cannot."""
    rng = np.random.default_rng(5)
    values = np.arange(5000.0, 30001.0, 5000.0)
    d = values[rng.integers(0, 6, 3000)]
    r = np.log(d) + 0.01 * rng.standard_normal(d.size)
    ref_map = _rmse_um(defocus_from_radius(r, reference_defocus=d), d)
    range_map = _rmse_um(defocus_from_radius(r, defocus_range=(5000.0, 30000.0), method="quartile"), d)
    assert ref_map < 0.1 and ref_map < range_map / 2, (ref_map, range_map)


def test_monotone_and_bad_reference_entries_ignored():
    rng = np.random.default_rng(6)
    r = rng.gamma(2.0, 1.0, 2000)
    ref = _defocus(2000, rng)
    ref[:50] = np.nan  # particles without CTF values
    ref[50:100] = 0.0
    mapping = fit_defocus_mapping(r, reference_defocus=ref, n_quantiles=51)
    assert mapping.n_fit == 1900
    grid = np.linspace(-1.0, r.max() + 5.0, 500)
    out = mapping.apply(grid)
    sign = 1.0 if mapping.direction == "increasing" else -1.0
    assert np.all(np.diff(sign * out) >= 0)
    assert out.min() >= np.nanmin(ref[100:]) and out.max() <= np.nanmax(ref)
    report = mapping.report()
    assert report["source"] == "reference" and report["n_fit"] == 1900


def test_star_without_ctf_values_falls_back_to_the_range():
    """A STAR whose rlnDefocusU/V are all 0 offers no reference; with a range given, the range is the target."""
    rng = np.random.default_rng(8)
    d = _defocus(1000, rng)
    r = 0.2 + 1e-4 * d
    mapping = fit_defocus_mapping(r, reference_defocus=np.zeros(1000), defocus_range=(LO, HI))
    assert mapping.source == "range" and mapping.spearman is None
    assert _rmse_um(mapping.apply(r), d) < 0.05
    with pytest.raises(ValueError):
        fit_defocus_mapping(r, reference_defocus=np.zeros(1000))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither a reference nor a range
        {"defocus_range": (0.5, 2.5)},  # µm, not Å
        {"defocus_range": (25000.0, 5000.0)},
        {"reference_defocus": np.full(10, 1.5)},  # µm
        {"reference_defocus": np.full(9, 15000.0)},  # wrong length
        {"defocus_range": (LO, HI), "direction": "up"},
        {"defocus_range": (LO, HI), "fit_mask": np.ones(10)},  # not bool
    ],
)
def test_bad_arguments(kwargs):
    r = np.linspace(1.0, 2.0, 10)
    with pytest.raises(ValueError):
        defocus_from_radius(r, **kwargs)


def test_bad_radius():
    with pytest.raises(ValueError):
        defocus_from_radius(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), defocus_range=(LO, HI))
    with pytest.raises(ValueError):
        defocus_from_radius(np.ones(10), defocus_range=(LO, HI))  # no information


def test_weight_from_defocus():
    d = np.array([-3000.0, 0.0, 5000.0, 10000.0, 25000.0])
    w = weight_from_defocus(d)
    np.testing.assert_allclose(w, [0.0, 0.0, np.exp(0.5) - 1, np.e - 1, np.exp(2.5) - 1])
    assert np.all(np.diff(w) >= 0)
    rng = np.random.default_rng(7)
    many = rng.uniform(LO, HI, (3, 5))
    np.testing.assert_allclose(weight_from_defocus(many), np.exp(many / 1e4) - 1)
    with pytest.raises(ValueError):
        weight_from_defocus(np.array([np.inf]))
