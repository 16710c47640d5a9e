"""Defocus from the latent polar radius (paper B, Sec. 3.2.2, eq. 7), and the weight built from it.

Paper B reads defocus off the radius r of the latent's first two principal components (see
:func:`relion_canon.analysis.latent_angle.polar_readout`) by matching the radius's quartiles to those of the
known defocus distribution:

    def̂ = (q3 − q1) · (r − q1(r)) / (q3(r) − q1(r)) + q1,

with q1, q3 the quartiles of a uniform distribution on the experiment's defocus range. That is a linear map
fixed by two points. The radius is only *monotonically* related to defocus (how a decoder lays defocus out
along the cone is not linear), so the default here matches many quantiles, not two: a monotone
piecewise-linear map from the radius's empirical quantiles to the target's at the same levels (quantile
mapping, i.e. histogram matching). Eq. 7 itself is kept as ``method="quartile"``. Either way the result is
clipped to the target's support, because a radius beyond every fitted one (junk, or a point off the cone)
says "at least this much defocus", not a linear extrapolation into physically absurd values.

The target distribution is either the STAR's own CTFFIND values (``reference_defocus``, per particle, Å)
or a uniform distribution on a user-given range ``defocus_range`` (Å), as in the paper.

Direction: the radius may grow or shrink with defocus, depending on how training laid out the cone. Where
a per-particle reference exists, ``direction="auto"`` takes the orientation whose ranks correlate
positively with it (Spearman). With only a range there is nothing to orient by; ``"auto"`` then follows the
paper's eq. 7, which assumes the radius increases with defocus (its slope (q3 − q1) / (q3(r) − q1(r)) is
positive; the paper gives no way to orient it otherwise). If the model at hand does the opposite, pass
``direction="decreasing"``; ``tests/analysis/test_defocus.py`` shows what a wrong orientation costs.

Better estimates than this one exist downstream of it: a CTF fit of each particle against a canonical
reference (done elsewhere in the project) uses the image itself rather than a one-dimensional summary of
it; and on real data, where CTFFIND's defocus is per micrograph, the particles of one micrograph share a
defocus, so pooling their radii would average the latent's noise away. This module does paper B's method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

Direction = Literal["auto", "increasing", "decreasing"]
Method = Literal["quantile", "quartile"]

ANGSTROM_PER_MICRON = 1.0e4
# Any cryo-EM defocus given in Å is far above this; a smaller maximum means the caller passed µm.
_SMALLEST_PLAUSIBLE_MAX_DEFOCUS = 100.0


@dataclass(frozen=True)
class DefocusMapping:
    """A fitted monotone map from latent radius to defocus (Å), and the facts the report needs."""

    radius_knots: np.ndarray  # strictly increasing, in units of the (signed) radius, see ``direction``
    defocus_knots: np.ndarray  # non-decreasing, Å, same length as radius_knots
    direction: Literal["increasing", "decreasing"]  # how defocus moves as the radius grows
    method: Method
    source: Literal["reference", "range"]  # what the target distribution came from
    spearman: float | None  # rank correlation of the radius with the reference (None without one)
    n_fit: int  # particles the map was fitted on
    clip: tuple[float, float]  # Å: the output never leaves this interval
    extrapolate: bool  # eq. 7 is a line through two knots; the quantile map is interpolation only

    def apply(self, radius: np.ndarray) -> np.ndarray:
        """Defocus in Å for each radius (any shape)."""
        r = _as_finite(radius, "radius")
        x = r if self.direction == "increasing" else -r
        if self.extrapolate:
            (x0, x1), (y0, y1) = self.radius_knots, self.defocus_knots
            out = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        else:
            out = np.interp(x, self.radius_knots, self.defocus_knots)
        return np.clip(out, *self.clip)

    def report(self) -> dict[str, Any]:
        """JSON-able summary for the job report."""
        return {
            "method": self.method,
            "source": self.source,
            "direction": self.direction,
            "spearman_radius_vs_reference": self.spearman,
            "n_fit": self.n_fit,
            "clip_angstrom": [float(self.clip[0]), float(self.clip[1])],
            "n_knots": int(self.radius_knots.size),
        }


def _as_finite(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _unique_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse tied x knots (discrete or saturated radii) to one, averaging their y: np.interp needs a
    strictly increasing abscissa, and the mean keeps the map monotone because y is sorted with x."""
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def fit_defocus_mapping(
    radius: np.ndarray,
    reference_defocus: np.ndarray | None = None,
    defocus_range: tuple[float, float] | None = None,
    *,
    direction: Direction = "auto",
    method: Method = "quantile",
    n_quantiles: int = 101,
    fit_mask: np.ndarray | None = None,
) -> DefocusMapping:
    """Fit the radius → defocus map; see the module docstring for the choices.

    ``radius``: (N,) latent polar radius. ``reference_defocus``: (N,) per-particle defocus in Å (e.g. the
    mean of rlnDefocusU/V); entries that are not finite or not positive (a STAR without CTF values) are
    left out of the fit, and if fewer than 4 remain the range is used instead (an error without one).
    ``defocus_range``: (min, max) in Å; with a reference it only clips the output, without one it defines
    the uniform target. ``fit_mask``: (N,) bool, the particles to fit on (e.g. not
    flagged as junk, whose radii say nothing about defocus); the map is then applied to every particle.
    ``n_quantiles``: number of evenly spaced quantile levels in [0, 1] for ``method="quantile"``.
    """
    r = _as_finite(radius, "radius")
    _check_settings(r, direction, method, n_quantiles, reference_defocus, defocus_range)
    use = _fit_rows(r, fit_mask)
    clip = _range_clip(defocus_range)
    ref, use = _usable_reference(r, reference_defocus, use, clip)
    n_fit = int(use.sum())
    if n_fit < 4:
        raise ValueError(f"only {n_fit} particles to fit the defocus map on (need at least 4)")

    r_fit = r[use]
    ref_fit = None if ref is None else ref[use]
    spearman = _rank_correlation(r_fit, ref_fit)
    resolved = _orientation(direction, spearman)
    x_fit = r_fit if resolved == "increasing" else -r_fit

    levels = np.array([0.25, 0.75]) if method == "quartile" else np.linspace(0.0, 1.0, n_quantiles)
    x_knots = np.quantile(x_fit, levels)
    y_knots, support, source = _target_knots(levels, ref_fit, clip, defocus_range)
    x_knots, y_knots = _checked_knots(method, x_knots, y_knots)
    return DefocusMapping(
        radius_knots=x_knots,
        defocus_knots=y_knots,
        direction=resolved,
        method=method,
        source=source,
        spearman=spearman,
        n_fit=n_fit,
        clip=support,
        extrapolate=method == "quartile",
    )


def _check_settings(r: np.ndarray, direction: str, method: str, n_quantiles: int,
                    reference_defocus: np.ndarray | None, defocus_range: tuple[float, float] | None) -> None:
    if r.ndim != 1 or r.size < 4:
        raise ValueError(f"radius must be a 1-D array of at least 4 values, got shape {r.shape}")
    if direction not in ("auto", "increasing", "decreasing"):
        raise ValueError(f"direction must be 'auto', 'increasing' or 'decreasing', got {direction!r}")
    if method not in ("quantile", "quartile"):
        raise ValueError(f"method must be 'quantile' or 'quartile', got {method!r}")
    if n_quantiles < 2:
        raise ValueError(f"n_quantiles must be at least 2, got {n_quantiles}")
    if reference_defocus is None and defocus_range is None:
        raise ValueError("give the reference defocus per particle, or the defocus range (min, max) in Å")


def _fit_rows(r: np.ndarray, fit_mask: np.ndarray | None) -> np.ndarray:
    """(N,) bool: the particles the caller lets the map be fitted on."""
    use = np.ones(r.size, dtype=bool)
    if fit_mask is not None:
        m = np.asarray(fit_mask)
        if m.shape != r.shape or m.dtype != bool:
            raise ValueError(f"fit_mask must be a bool array of shape {r.shape}")
        use &= m
    return use


def _range_clip(defocus_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """The user's (min, max) in Å, checked, or None."""
    if defocus_range is None:
        return None
    lo, hi = (float(v) for v in defocus_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"defocus range must be (min, max) in Å with 0 < min < max, got {defocus_range}")
    if hi < _SMALLEST_PLAUSIBLE_MAX_DEFOCUS:
        raise ValueError(f"defocus range is in Å, not µm: {defocus_range} (e.g. 1 µm = 10000 Å)")
    return lo, hi


def _usable_reference(r: np.ndarray, reference_defocus: np.ndarray | None, use: np.ndarray,
                      clip: tuple[float, float] | None) -> tuple[np.ndarray | None, np.ndarray]:
    """The reference defocus (None where there is none to use) and the fit rows narrowed to its valid entries."""
    if reference_defocus is None:
        return None, use
    ref = np.asarray(reference_defocus, dtype=np.float64)
    if ref.shape != r.shape:
        raise ValueError(f"reference defocus must have the radius's shape {r.shape}, got {ref.shape}")
    valid = np.isfinite(ref) & (ref > 0)
    if np.count_nonzero(use & valid) < 4 and clip is not None:
        # A STAR without CTF values (zeros) has no reference to offer; the range still defines a target.
        return None, use
    return ref, use & valid


def _rank_correlation(r_fit: np.ndarray, ref_fit: np.ndarray | None) -> float | None:
    """Spearman's ρ of the radius with the reference (None without one, or when either is constant)."""
    if ref_fit is None:
        return None
    spearman = None
    if np.ptp(r_fit) > 0 and np.ptp(ref_fit) > 0:
        spearman = float(spearmanr(r_fit, ref_fit).statistic)
    if np.nanmax(ref_fit) < _SMALLEST_PLAUSIBLE_MAX_DEFOCUS:
        raise ValueError("reference defocus is in Å, not µm (its maximum is below 100)")
    return spearman


def _orientation(direction: Direction, spearman: float | None) -> Literal["increasing", "decreasing"]:
    if direction != "auto":
        return direction
    # A radius unrelated to the reference (ρ ≈ 0 or undefined) cannot be oriented; the paper's
    # convention is then as good a guess as any, and the report carries ρ so the user can see it.
    return "decreasing" if spearman is not None and spearman < 0 else "increasing"


def _target_knots(levels: np.ndarray, ref_fit: np.ndarray | None, clip: tuple[float, float] | None,
                  defocus_range: tuple[float, float] | None
                  ) -> tuple[np.ndarray, tuple[float, float], Literal["reference", "range"]]:
    """The target distribution's quantiles at ``levels`` (Å), its support, and where it came from."""
    if ref_fit is not None:
        support = (float(ref_fit.min()), float(ref_fit.max()))
        if clip is not None:
            support = (max(support[0], clip[0]), min(support[1], clip[1]))
            if support[0] > support[1]:
                raise ValueError(f"reference defocus lies outside the defocus range {defocus_range}")
        return np.quantile(ref_fit, levels), support, "reference"
    assert clip is not None
    return clip[0] + (clip[1] - clip[0]) * levels, clip, "range"


def _checked_knots(method: Method, x_knots: np.ndarray, y_knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 needs two distinct quartiles; the quantile map needs strictly increasing knots (ties merged)."""
    if method == "quartile" and x_knots[1] <= x_knots[0]:
        raise ValueError("the radius's first and third quartiles coincide: eq. 7 is undefined")
    if method == "quantile":
        x_knots, y_knots = _unique_knots(x_knots, y_knots)
        if x_knots.size < 2:
            raise ValueError("all radii are equal: they carry no defocus information")
    return x_knots, y_knots


def defocus_from_radius(
    radius: np.ndarray,
    reference_defocus: np.ndarray | None = None,
    defocus_range: tuple[float, float] | None = None,
    *,
    direction: Direction = "auto",
    method: Method = "quantile",
    n_quantiles: int = 101,
    fit_mask: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) defocus in Å from the latent polar radius: :func:`fit_defocus_mapping` applied to every particle."""
    mapping = fit_defocus_mapping(
        radius,
        reference_defocus,
        defocus_range,
        direction=direction,
        method=method,
        n_quantiles=n_quantiles,
        fit_mask=fit_mask,
    )
    return mapping.apply(radius)


def weight_from_defocus(defocus_angstrom: np.ndarray) -> np.ndarray:
    """Paper B's per-particle weight w = exp(def̂ in µm) − 1, for ``rlnParticleFigureOfMerit``.

    The formula grows with defocus, although the paper's prose says high-defocus (blurry) images deserve
    less confidence; the formula is what its weighted angle errors (eq. 8) were computed with, and at the
    low resolution these models work at it is right: more defocus means more low-frequency contrast and so
    a better-determined angle. Defocus ≤ 0 (not physical for underfocus) gives weight 0, so
    ``relion_reconstruct --fom_weighting`` never sees a negative weight.
    """
    d = _as_finite(defocus_angstrom, "defocus")
    return np.expm1(np.clip(d / ANGSTROM_PER_MICRON, 0.0, None))
