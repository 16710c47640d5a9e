"""The plots of both papers, each a small function returning a matplotlib :class:`~matplotlib.figure.Figure`:
scatter plots, curves and histograms of what a job estimated and how it scored (the particle images themselves,
grids and class averages, are drawn by :mod:`relion_canon.analysis.image_figures`).

Figures are built with the object API on an Agg canvas, never through ``pyplot``: nothing opens a window,
nothing is kept in pyplot's global figure list (a long job does not leak memory), and a user's own
interactive backend is left alone. Every figure has a title, axis labels with units, and a legend or colour
bar, so it reads without the paper. Angles are in degrees, defocus in µm.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from relion_canon.analysis.latent_angle import polar_readout

_CYCLIC = "twilight"  # for angles: −180° and 180° get the same colour
_DENSE = 3000  # above this many points, scatter plots become 2-D histograms (hexagonal bins, as paper B)
_MAX_POINTS = 20_000  # latent plots show at most this many particles


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure on its own Agg canvas: drawn and saved without pyplot, so nothing opens or stays in memory."""
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _finite(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=np.float64))
    return ok


def latent_pca(
    latent: np.ndarray,
    angle_deg: np.ndarray | None = None,
    defocus_um: np.ndarray | None = None,
    *,
    angle_label: str = "in-plane angle (°)",
    defocus_label: str = "defocus (µm)",
    title: str = "Latent space, first two principal components",
) -> Figure:
    """Paper B, Fig. 4/6: the latent means projected on their first two principal components, one panel
    coloured by angle (cyclic colour map) and one by defocus, for whichever of the two is given."""
    z = np.asarray(latent, dtype=np.float64)
    # polar_readout without whitening is the PCA projection UΣ in polar form; back to Cartesian for plotting.
    angle, radius = polar_readout(z, whiten=False)
    pc1, pc2 = radius * np.cos(angle), radius * np.sin(angle)
    # The components come from every particle; a fixed random subset is drawn, since a million dots show
    # no more than 20,000 and take minutes to render.
    shown = np.arange(len(z))
    if len(z) > _MAX_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(len(z), _MAX_POINTS, replace=False))
    pc1, pc2 = pc1[shown], pc2[shown]
    angle_deg = None if angle_deg is None else np.asarray(angle_deg, dtype=np.float64)[shown]
    defocus_um = None if defocus_um is None else np.asarray(defocus_um, dtype=np.float64)[shown]
    panels = [(v, label, cmap) for v, label, cmap in
              ((angle_deg, angle_label, _CYCLIC), (defocus_um, defocus_label, "viridis")) if v is not None]
    if not panels:
        panels = [(None, "", None)]
    fig = new_figure(4.6 * len(panels), 4.2)
    for ax, (values, label, cmap) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        if values is None:
            ax.scatter(pc1, pc2, s=4, alpha=0.6, rasterized=True)
        else:
            v = np.asarray(values, dtype=np.float64)
            limits = {"vmin": -180.0, "vmax": 180.0} if cmap == _CYCLIC else {}
            sc = ax.scatter(pc1, pc2, c=v, s=4, cmap=cmap, rasterized=True, **limits)
            fig.colorbar(sc, ax=ax, label=label)
            ax.set_title(f"coloured by {label}")
        ax.set_xlabel("PC 1 (latent units)")
        ax.set_ylabel("PC 2 (latent units)")
        ax.set_aspect("equal", adjustable="datalim")
    count = f"n = {len(z)}" if len(shown) == len(z) else f"{len(shown)} of {len(z)} particles shown"
    fig.suptitle(f"{title} ({count})")
    return fig


def predicted_vs_true(
    true: np.ndarray,
    predicted: np.ndarray,
    *,
    quantity: str,
    unit: str,
    reference: str = "ground truth",
    estimate: str = "relion_canon",
    rmse: float | None = None,
    cyclic: bool = False,
    note: str | None = None,
) -> Figure:
    """Paper B, Fig. 8: each particle's estimate against the reference value, with the identity line.
    Many particles are shown as a 2-D histogram (hexagonal bins, brighter = more particles). ``note`` is
    a third title line (e.g. how the estimates were aligned)."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    ok = _finite(t, p)
    t, p = t[ok], p[ok]
    fig = new_figure(5.0, 4.6)
    ax = fig.subplots()
    lo, hi = (-180.0, 180.0) if cyclic else (float(min(t.min(initial=0), p.min(initial=0))),
                                               float(max(t.max(initial=1), p.max(initial=1))))
    if len(t) > _DENSE:
        hb = ax.hexbin(t, p, gridsize=60, bins="log", mincnt=1, extent=(lo, hi, lo, hi), cmap="magma")
        fig.colorbar(hb, ax=ax, label="particles per bin")
    else:
        ax.scatter(t, p, s=6, alpha=0.6, label=f"particles (n = {len(t)})", rasterized=True)
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="estimate = reference")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"{quantity}, {reference} ({unit})")
    ax.set_ylabel(f"{quantity}, {estimate} ({unit})")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    lines = [f"{quantity}: {estimate}", f"vs {reference}"]
    if rmse is not None:
        lines[1] += f", rMSE {rmse:.3g} {unit}"
    if note:
        lines.append(note)
    ax.set_title("\n".join(lines), fontsize="medium")
    return fig


def roc_curves(labels: np.ndarray, scores: Mapping[str, np.ndarray], *, label_source: str) -> Figure:
    """Paper B, Fig. 5: one ROC curve per outlier detector (score high = outlier), AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels, dtype=bool)
    fig = new_figure(5.0, 4.6)
    ax = fig.subplots()
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        ok = np.isfinite(s)
        if not (y[ok].any() and not y[ok].all()):
            continue
        fpr, tpr, _ = roc_curve(y[ok], s[ok])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y[ok], s[ok]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (good particles flagged)")
    ax.set_ylabel("true positive rate (outliers flagged)")
    ax.set_title(f"Outlier detection ROC\nlabels: {label_source} ({int(y.sum())} of {len(y)} positive)")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Every logged loss (keys with a "/", e.g. ``model/loss``, ``critic/wd``), one panel per prefix, since the
    parts of a model's loss live on very different scales. Where the epochs recorded each step's loss
    (``step_losses``), the panel shows those against the step, with each epoch's mean at its last step: a
    job of one epoch has a curve, not one dot per loss."""
    keys = sorted({k for entry in history for k in entry if "/" in k and _is_number(entry[k])})
    if not keys:
        raise ValueError("the training history has no numeric entries named like 'model/loss'")
    epochs = np.array([float(e.get("epoch", i + 1)) if _is_number(e.get("epoch", i + 1)) else i + 1
                       for i, e in enumerate(history)])
    per_step = {k: [list(e.get("step_losses", {}).get(k, [])) for e in history] for k in keys}
    has_steps = any(len(v) for steps in per_step.values() for v in steps)
    # Each epoch's last step: where the epoch means sit on a per-step axis.
    ends = np.cumsum([max((len(steps[i]) for steps in per_step.values()), default=0) for i in range(len(history))])
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/", 1)[0], []).append(k)
    fig = new_figure(4.8 * len(groups), 3.8)
    for ax, (prefix, names) in zip(np.atleast_1d(fig.subplots(1, len(groups))), groups.items()):
        for i, name in enumerate(names):
            means = np.array([float(e[name]) if _is_number(e.get(name)) else np.nan for e in history])
            steps = per_step[name]
            if has_steps:
                if any(steps):
                    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in steps])
                    ax.plot(np.arange(1, len(values) + 1), values, lw=1, alpha=0.7, color=f"C{i}",
                            label=f"{name}, per step")
                ax.plot(ends, means, marker="o", ms=5, ls="--", color=f"C{i}", label=f"{name}, epoch mean")
            else:
                ax.plot(epochs, means, marker="o" if len(epochs) < 30 else None, ms=3, color=f"C{i}", label=name)
        ax.set_xlabel("training step" if has_steps else "epoch")
        ax.set_ylabel("loss (model units)")
        ax.set_title(prefix)
        ax.legend(fontsize="small")
    fig.suptitle(f"Training curves ({len(history)} epoch{'s' if len(history) != 1 else ''}"
                 + (f", {int(ends[-1])} steps)" if has_steps else ")"))
    return fig


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def angle_histogram(angles_deg: np.ndarray, *, title: str = "In-plane angle (rlnAnglePsi)",
                    xlabel: str = "psi (°)") -> Figure:
    """Distribution of angles in [−180°, 180°) in 5° bins; a flat histogram is what uniform rotation
    gives, peaks suggest a preferred angle or a collapsed frame."""
    a = np.asarray(angles_deg, dtype=np.float64)
    a = a[np.isfinite(a)]
    fig = new_figure(5.5, 3.6)
    ax = fig.subplots()
    ax.hist(a, bins=np.arange(-180, 181, 5), histtype="stepfilled", color="C0", alpha=0.8,
            label=f"particles (n = {len(a)})")
    if len(a):
        ax.axhline(len(a) / 72, color="k", ls="--", lw=1, label="uniform")
    ax.set_xlim(-180, 180)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("particles per 5° bin")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def error_histogram(
    errors_deg: np.ndarray, *, title: str = "In-plane angle error after global offset and sign"
) -> Figure:
    """Per-particle angle errors (degrees, wrapped to [−180°, 180°)), with rMSE and median |error|. The axis
    spans the 99th percentile of |error| (at least 5°, at most 180°), so that errors of a few degrees are not
    squeezed into one bin of a ±180° axis; how many particles lie beyond it is said in the legend."""
    e = np.asarray(errors_deg, dtype=np.float64)
    e = e[np.isfinite(e)]
    span = 180.0 if not len(e) else float(np.clip(1.1 * np.percentile(np.abs(e), 99), 5.0, 180.0))
    outside = int((np.abs(e) > span).sum())
    fig = new_figure(5.5, 3.6)
    ax = fig.subplots()
    bins = np.linspace(-span, span, 81)
    ax.hist(np.clip(e, -span, span), bins=bins, histtype="stepfilled", color="C1", alpha=0.8,
            label=f"particles (n = {len(e)})" + (f"; {outside} beyond ±{span:.3g}° drawn at the edges"
                                                 if outside else ""))
    if len(e):
        rmse, med = float(np.sqrt(np.mean(e**2))), float(np.median(np.abs(e)))
        for x in (-med, med):
            ax.axvline(x, color="k", ls="--", lw=1, label="± median |error|" if x < 0 else None)
        ax.set_title(f"{title}\nrMSE {rmse:.3g}°, median |error| {med:.3g}°")
    else:
        ax.set_title(title)
    ax.set_yscale("log")
    ax.set_xlim(-span, span)
    ax.set_xlabel("error (°)")
    ax.set_ylabel(f"particles per {bins[1] - bins[0]:.2g}° bin")
    ax.legend(fontsize="small")
    return fig


THRESHOLD_COLOUR = "k"  # no detector is drawn in black: the threshold line is never mistaken for one


def outlier_scores(
    scores: Mapping[str, np.ndarray],
    threshold: float | None = None,
    *,
    labels: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
) -> Figure:
    """Histogram of each standardised score (high = junk). The first score is the one the job's threshold
    applies to (the one that decides): drawn filled, the others as outlines. ``flagged`` (the job's flag,
    ``rlnCanonIsOutlier``) lets the legend count the particles flagged by that score and those flagged only
    for being in a junk class. With labels (truth), good particles and outliers are drawn separately."""
    fig = new_figure(8.5, 4.0)
    ax = fig.subplots()
    finite = [np.asarray(s, dtype=np.float64) for s in scores.values()]
    finite_values = np.concatenate([s[np.isfinite(s)] for s in finite]) if finite else np.zeros(0)
    lo, hi = (float(finite_values.min()), float(finite_values.max())) if finite_values.size else (0.0, 1.0)
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    for i, (name, s) in enumerate(scores.items()):
        s = np.asarray(s, dtype=np.float64)
        deciding = i == 0 and threshold is not None
        style = ({"histtype": "stepfilled", "alpha": 0.35, "lw": 2.0, "ec": f"C{i}"} if deciding
                 else {"histtype": "step", "lw": 1.2})
        label = f"{name} (decides)" if deciding else name
        if labels is None:
            ax.hist(s[np.isfinite(s)], bins=bins, color=f"C{i}", label=label, **style)
        else:
            y = np.asarray(labels, dtype=bool)
            ax.hist(s[~y & np.isfinite(s)], bins=bins, color=f"C{i}", label=f"{label}, good", **style)
            ax.hist(s[y & np.isfinite(s)], bins=bins, ls="--", color=f"C{i}", label=f"{label}, outliers",
                    **{**style, "histtype": "step"})
    if threshold is not None:
        first = np.asarray(next(iter(scores.values())), dtype=np.float64) if scores else np.zeros(0)
        by_score = first > threshold
        text = f"threshold {threshold:g}: {int(by_score.sum())} above it"
        if flagged is not None:
            flag = np.asarray(flagged, dtype=bool)
            only_class = int((flag & ~by_score).sum())
            text = (f"threshold {threshold:g}\n{int(flag.sum())} of {flag.size} flagged:\n"
                    f"{int((flag & by_score).sum())} with the deciding score above it,\n"
                    f"{only_class} only for being in a junk class")
        ax.axvline(threshold, color=THRESHOLD_COLOUR, lw=2, ls="--", label=text)
    ax.set_xlabel("outlier score (Z, high = junk)")
    ax.set_ylabel("particles per bin")
    ax.set_yscale("log")
    ax.set_title("Outlier scores")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def text_page(text: str) -> Figure:
    """A page holding one message (e.g. for a PDF that would otherwise have no page)."""
    fig = new_figure(6.0, 2.0)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def direction_distribution(rot_deg: np.ndarray, tilt_deg: np.ndarray, weights: np.ndarray,
                           labels: Sequence[str], *, ambiguous: np.ndarray | None = None,
                           symmetry: str = "C1", particles_deg: tuple[np.ndarray, np.ndarray] | None = None) -> Figure:
    """Where the assigned projection directions lie on the sphere, on an equal-area (Mollweide) map: longitude
    rot, latitude 90° − tilt (the top is tilt 0, the reference's +z), one disc per class with an area
    proportional to ``weights`` (its particles with a prior), labelled; ``ambiguous`` classes, which got no
    prior, as red crosses at their best direction; ``particles_deg`` (rot, tilt), each particle's own direction,
    as small dots beneath. A one-sided map shows the views the data lack."""

    def on_map(rot_: np.ndarray, tilt_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.deg2rad((np.asarray(rot_, dtype=np.float64) + 180.0) % 360.0 - 180.0),
                np.deg2rad(90.0 - np.asarray(tilt_, dtype=np.float64)))

    rot, lat = on_map(rot_deg, tilt_deg)
    w = np.asarray(weights, dtype=np.float64)
    bad = np.zeros(len(w), bool) if ambiguous is None else np.asarray(ambiguous, dtype=bool)
    fig = new_figure(8.5, 5.0)
    ax = fig.add_subplot(projection="mollweide")
    if particles_deg is not None and len(particles_deg[0]):
        ax.scatter(*on_map(*particles_deg), s=4, color="0.35", alpha=0.6, linewidths=0, zorder=2,
                   label="particles' own directions")
    good = ~bad
    if good.any():
        sizes = 40.0 + 600.0 * w[good] / max(float(w[good].max()), 1.0)
        dots = ax.scatter(rot[good], lat[good], s=sizes, c=w[good], cmap="viridis", edgecolors="black",
                          linewidths=0.6, zorder=3)
        fig.colorbar(dots, ax=ax, shrink=0.6, label="particles with a prior")
    if bad.any():
        ax.scatter(rot[bad], lat[bad], marker="x", s=80, color="red", linewidths=2, zorder=3,
                   label="ambiguous (no prior)")
    if bad.any() or particles_deg is not None:
        legend = ax.legend(loc="lower right", fontsize="small", bbox_to_anchor=(1.0, -0.12))
        for handle in legend.legend_handles:
            if handle.get_label() == "particles' own directions":
                handle.set_sizes([20.0])  # the map's dots are too small to read in a legend
    for x, y, text in zip(rot, lat, labels):
        ax.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize="small", zorder=4)
    ax.grid(True, alpha=0.4)
    ax.set_xticks(np.deg2rad([-120, -60, 0, 60, 120]))  # every 30° crowds the equator the discs sit on
    ax.tick_params(axis="x", labelsize="small", labelcolor="0.35")
    ax.yaxis.set_major_formatter(lambda value, _: f"{90.0 - np.rad2deg(value):.0f}°")
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("tilt (°)")
    total = int(w[good].sum()) if good.any() else 0
    ax.set_title(f"Assigned projection directions ({int(good.sum())} classes, {total} particles; {symmetry}, "
                 "equal-area map)", pad=14)
    return fig
