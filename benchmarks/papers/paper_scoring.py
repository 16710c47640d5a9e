"""The papers' metrics on one method's answers, through the project's own implementations
(``relion_canon.analysis``): canonical image MSE (paper A, Table 1) and angle / defocus / outlier errors
(paper B, Table 1)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from relion_canon.analysis.defocus import defocus_from_radius, fit_defocus_mapping, weight_from_defocus
from relion_canon.analysis.evaluation import (
    AngleMetrics,
    angle_metrics,
    canonical_errors,
    defocus_metrics,
    fit_canonical_frame,
    outlier_metrics,
    to_truth_frame,
)
from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.outliers import outlier_scores
from relion_canon.preprocess.fourier import fourier_resample

from paper_data import Dataset


def _disc(box: int) -> np.ndarray:
    """The evaluation's mask (radius box/2 − 1 px about pixel box//2), for the raw-intensity MSE."""
    y, x = np.mgrid[:box, :box] - box // 2
    return np.hypot(x, y) <= box / 2 - 1


def canonical_scores(canonical: np.ndarray, truth: np.ndarray, pixel_scale: bool) -> tuple[dict[str, Any], dict]:
    """Paper A's Table 1 on (N, H, W) canonical images against the clean unrotated truth.

    The learned frame's one global rotation and mirror are fitted over the whole set and removed
    (``fit_canonical_frame``); the MSE is the benchmark's normalised one (0 identical, 2 uncorrelated).
    With ``pixel_scale`` (MNIST, where paper A states its scale: intensities in [0, 1]) also the plain
    per-pixel MSE in those units, in the same frame and mask. Returns the scores and, for the figure, the
    per-image errors and the canonical images in the truth's frame."""
    canonical = np.asarray(canonical, dtype=np.float64)
    if truth.shape[-1] != canonical.shape[-1]:
        truth = fourier_resample(truth, canonical.shape[-1])
    rotation, mirrored = fit_canonical_frame(canonical, truth)
    mse = canonical_errors(canonical, truth, rotation, mirrored)
    scores: dict[str, Any] = {
        "canonical_mse_mean": float(mse.mean()),
        "canonical_mse_worst": float(mse.max()),
        "canonical_frame_rotation_deg": float(rotation),
        "canonical_frame_mirrored": bool(mirrored),
    }
    aligned = to_truth_frame(canonical, rotation, mirrored)
    if pixel_scale:
        disc = _disc(canonical.shape[-1])
        pixel = np.mean((aligned[:, disc] - np.asarray(truth, np.float64)[:, disc]) ** 2, axis=1)
        scores["pixel_mse_mean"] = float(pixel.mean())
        scores["pixel_mse_worst"] = float(pixel.max())
    return scores, {"mse": mse, "aligned": aligned, "truth": truth}


def rotational_average(images: np.ndarray) -> np.ndarray:
    """Each image's average over all in-plane rotations about pixel box//2 (its radial profile, linearly
    interpolated between integer radii, drawn back on the grid)."""
    x = np.asarray(images, dtype=np.float64)
    box = x.shape[-1]
    yy, xx = np.mgrid[:box, :box] - box // 2
    r = np.hypot(xx, yy).ravel()
    lo = np.floor(r).astype(int)
    frac = r - lo
    n_bins = int(lo.max()) + 2
    # (pixels, bins) weights of each pixel in the two radii around it.
    split = np.zeros((r.size, n_bins))
    split[np.arange(r.size), lo] = 1.0 - frac
    split[np.arange(r.size), lo + 1] = frac
    profile = (x.reshape(len(x), -1) @ split) / np.maximum(split.sum(axis=0), 1e-12)
    return (profile @ split.T).reshape(x.shape)


def rotation_blind_scores(truth: np.ndarray, pixel_scale: bool) -> dict[str, Any]:
    """The canonical MSE of each true image's own rotational average: what a method scores that knows every
    image's content but nothing about its angle. A canonical MSE above this says the angle was not learnt."""
    blind = rotational_average(truth)
    mse = canonical_errors(blind, truth, 0.0, False)
    scores: dict[str, Any] = {"canonical_mse_mean": float(mse.mean()), "canonical_mse_worst": float(mse.max())}
    if pixel_scale:
        disc = _disc(truth.shape[-1])
        pixel = np.mean((blind[:, disc] - np.asarray(truth, np.float64)[:, disc]) ** 2, axis=1)
        scores.update(pixel_mse_mean=float(pixel.mean()), pixel_mse_worst=float(pixel.max()))
    return scores


def angle_scores(psi_deg: np.ndarray, true_deg: np.ndarray, weights: np.ndarray | None = None
                 ) -> tuple[dict[str, Any], AngleMetrics]:
    """Paper B's eq. 8 (one global offset and sign), plus paper A's mean squared angle error in rad²; and the
    full metrics (per-particle errors, for the figure)."""
    m = angle_metrics(psi_deg, true_deg, weights)
    return {
        "psi_rmse_deg": m.rmse_deg,
        "psi_median_deg": m.median_deg,
        "psi_weighted_rmse_deg": m.weighted_rmse_deg,
        "psi_mse_rad2": float(np.mean(np.deg2rad(m.errors_deg) ** 2)),
        "psi_offset_deg": m.offset_deg,
        "psi_sign": m.sign,
        "n_angle": m.n,
    }, m


def latent_defocus(latent: np.ndarray, data: Dataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Paper B's defocus from the latent polar radius, two ways.

    * ``eq7``: the paper's eq. 7, the radius's quartiles matched to those of a uniform distribution on the
      protocol's known defocus range. Eq. 7 cannot tell which way the radius runs; one global direction is
      taken from the rank correlation with the STAR's defocus, as the angle metric takes one global sign.
    * ``quantile``: what the job does with the latent: the radius's quantiles matched to those of the
      STAR's own defocus values (their distribution and that one direction; no particle's own value).
    """
    _, radius = polar_readout(latent)
    star = data.star_defocus(rows)
    assert star is not None and data.defocus_range is not None
    rho = spearmanr(radius, star).statistic
    direction = "decreasing" if np.isfinite(rho) and rho < 0 else "increasing"
    eq7 = fit_defocus_mapping(radius, defocus_range=data.defocus_range, method="quartile",
                              direction=direction).apply(radius)
    quantile = defocus_from_radius(radius, reference_defocus=star)
    return {"eq7": eq7, "quantile": quantile, "spearman_radius_vs_defocus": np.float64(rho)}


def paper_b_scores(data: Dataset, rows: np.ndarray, psi_deg: np.ndarray, defocus: dict[str, np.ndarray],
                   weights: np.ndarray, junk_score: np.ndarray | None, junk_score_name: str) -> dict[str, Any]:
    """Angle (plain, and weighted by w = exp(def̂) − 1 as paper B's Table 1 reports it), defocus rMSE and
    outlier AUC. Angle and defocus over the true particles only (junk has no true angle)."""
    junk = data.is_junk(rows)
    good = ~junk
    scores, _ = angle_scores(psi_deg[good], data.true_psi(rows)[good], weights[good])
    true_def = data.true_defocus(rows)
    assert true_def is not None
    for key, values in defocus.items():
        if key.startswith("spearman"):
            scores[key] = float(values)
            continue
        d = defocus_metrics(values[good], true_def[good], "ground truth mean defocus")
        scores[f"defocus_rmse_um_{key}"] = d.rmse_um
        scores[f"defocus_bias_um_{key}"] = d.mean_error_um
    scores["outlier_auc"] = None
    scores["outlier_score"] = junk_score_name
    if junk_score is not None and junk.any() and not junk.all():
        o = outlier_metrics(junk, {junk_score_name: junk_score}, "ground-truth junk labels")
        scores["outlier_auc"] = o.auc[junk_score_name]
    scores["n_junk"] = int(junk.sum())
    return scores


def model_paper_b(data: Dataset, rows: np.ndarray, psi_deg: np.ndarray, latent: np.ndarray, seed: int
                  ) -> dict[str, Any]:
    """Paper B's whole read-out applied to any model's latent: defocus from the polar radius (eq. 7), weights
    from that defocus, outliers by an isolation forest on the latent (the detector of paper B's Table 1)."""
    defocus = latent_defocus(latent, data, rows)
    weights = weight_from_defocus(defocus["eq7"])
    junk = outlier_scores(latent, method="isolation_forest", seed=seed).z if data.is_junk(rows).any() else None
    return paper_b_scores(data, rows, psi_deg, defocus, weights, junk, "isolation forest on the latent")
