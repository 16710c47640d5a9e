"""`align_angles` and its error summaries: a known global offset and sign come back, and the per-particle
errors (and their rmse, median, weighted rmse) are exactly the ones put in."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.metrics import align_angles

# Zero-mean errors (so the fitted offset does not absorb any of them), degrees.
ERRORS = np.array([-4.0, 4.0, -1.0, 1.0, -2.0, 2.0, 0.0, -3.0, 3.0, 0.0])


def _truth(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-180.0, 180.0, n)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("offset", [0.0, 37.5, -120.0, 179.0])
def test_finds_a_global_offset(offset):
    true = _truth(200)
    errors = np.tile(ERRORS, 20)
    fit = align_angles(_wrap(true + offset + errors), true)
    assert fit.sign == 1
    assert _wrap(np.array(fit.offset - offset)) == pytest.approx(0.0, abs=1e-3)
    assert -180.0 <= fit.offset < 180.0
    np.testing.assert_allclose(fit.errors, errors, atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 25.0, -150.0])
def test_finds_a_sign_flip(offset):
    # A frame that turns the other way: −predicted = truth + offset.
    true = _truth(200, seed=1)
    errors = np.tile(ERRORS, 20)
    fit = align_angles(_wrap(-(true + offset + errors)), true)
    assert fit.sign == -1
    assert _wrap(np.array(fit.offset - offset)) == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(fit.errors, errors, atol=1e-3)


def test_without_sign_a_flipped_frame_stays_wrong():
    true = _truth(200, seed=2)
    flipped = _wrap(-(true + 10.0))
    assert align_angles(flipped, true).rmse < 1e-3
    fit = align_angles(flipped, true, allow_sign=False)
    assert fit.sign == 1 and fit.rmse > 60.0


def test_errors_are_wrapped_across_the_seam():
    # Truth and prediction on either side of ±180°: the error is the short way round, not ~360°.
    true = np.array([179.0, -179.0, 178.0, -178.0, 0.0, 90.0])
    predicted = _wrap(true + np.array([2.0, -2.0, 3.0, -3.0, 0.0, 0.0]))
    fit = align_angles(predicted, true, allow_sign=False)
    assert np.all(np.abs(fit.errors) <= 3.0 + 1e-3)
    assert np.all((fit.errors >= -180.0) & (fit.errors < 180.0))


def test_rmse_median_and_weighted_rmse_of_known_errors():
    true = _truth(len(ERRORS), seed=3)
    fit = align_angles(_wrap(true + 60.0 + ERRORS), true)
    np.testing.assert_allclose(fit.errors, ERRORS, atol=1e-3)
    assert fit.rmse == pytest.approx(np.sqrt(np.mean(ERRORS**2)), abs=1e-3)  # sqrt(6)
    assert fit.rmse == pytest.approx(np.sqrt(6.0), abs=1e-3)
    assert fit.median == pytest.approx(2.0, abs=1e-3)  # median of |errors|: 0 0 1 1 2 2 3 3 4 4
    weights = np.zeros(len(ERRORS))
    weights[[0, 1]] = 1.0  # only the ±4° particles count
    assert fit.weighted_rmse(weights) == pytest.approx(4.0, abs=1e-3)
    weights = np.arange(1.0, len(ERRORS) + 1)
    assert fit.weighted_rmse(weights) == pytest.approx(np.sqrt(np.sum(weights * ERRORS**2) / weights.sum()), abs=1e-3)
    assert fit.weighted_rmse(np.ones(len(ERRORS))) == pytest.approx(fit.rmse)


def test_offset_is_the_least_squares_one_not_the_circular_mean():
    # One 90° error among small ones: least squares moves the offset by 90/n, the rmse is minimal there.
    true = _truth(10, seed=4)
    errors = np.zeros(10)
    errors[0] = 90.0
    fit = align_angles(_wrap(true + errors), true, allow_sign=False)
    assert fit.offset == pytest.approx(9.0, abs=1e-2)
    for nudge in (-0.5, 0.5):
        assert np.sqrt(np.mean(_wrap(errors - fit.offset - nudge) ** 2)) > fit.rmse


@pytest.mark.parametrize("predicted, true", [(np.zeros(3), np.zeros(4)), (np.zeros(0), np.zeros(0)),
                                             (np.zeros((2, 2)), np.zeros((2, 2)))])
def test_rejects_mismatched_or_empty_input(predicted, true):
    with pytest.raises(ValueError):
        align_angles(predicted, true)
