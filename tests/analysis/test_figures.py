"""figures: each plot shows the data it is given, labelled with units, and renders headless (Agg)."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection, PolyCollection
from sklearn.metrics import roc_auc_score

from relion_canon.analysis import figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _texts(fig) -> str:
    """Every title, axis label, legend entry and colour-bar label of a figure, joined."""
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


@pytest.fixture
def cone():
    rng = np.random.default_rng(0)
    t = rng.uniform(-np.pi, np.pi, 300)
    r = rng.uniform(0.5, 2.5, 300)
    latent = np.stack([r * np.cos(t), 0.5 * r * np.sin(t), r, 0.01 * rng.standard_normal(300)], axis=1) @ \
        np.linalg.qr(rng.standard_normal((4, 4)))[0]
    return latent, np.rad2deg(t), r


def test_latent_pca_plots_the_principal_components(cone):
    latent, angle, defocus = cone
    fig = figures.latent_pca(latent, angle, defocus)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    panels = [ax for ax in fig.axes if ax.get_xlabel().startswith("PC 1")]
    assert len(panels) == 2 and len(fig.axes) == 4  # two panels, two colour bars
    points = panels[0].collections[0].get_offsets()
    # The same PCA projection numpy gives, up to the sign of each component.
    centred = latent - latent.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :2] * s[:2]
    for k in range(2):
        assert np.allclose(np.abs(points[:, k]), np.abs(scores[:, k]), atol=1e-8)
    assert np.allclose(panels[0].collections[0].get_array(), angle)
    assert np.allclose(panels[1].collections[0].get_array(), defocus)
    text = _texts(fig)
    assert "in-plane angle (°)" in text and "defocus (µm)" in text and "n = 300" in text
    assert _png(fig).startswith(b"\x89PNG")
    assert len([a for a in figures.latent_pca(latent).axes if a.get_xlabel()]) == 1


def test_latent_pca_shows_a_subset_of_many_particles(monkeypatch, cone):
    latent, angle, _ = cone
    full = figures.latent_pca(latent, angle).axes[0].collections[0]
    monkeypatch.setattr(figures, "_MAX_POINTS", 100)
    fig = figures.latent_pca(latent, angle)
    points = fig.axes[0].collections[0]
    assert len(points.get_offsets()) == 100 and "100 of 300 particles shown" in fig._suptitle.get_text()
    # Each shown point keeps its own colour: the subset is the same for coordinates and values.
    rows = [int(np.flatnonzero(np.all(full.get_offsets() == p, axis=1))[0]) for p in points.get_offsets()[:10]]
    assert np.allclose(points.get_array()[:10], angle[rows])


def test_predicted_vs_true_scatter_and_hexbin():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.5, 2.5, 200)
    fig = figures.predicted_vs_true(true, true + 0.1, quantity="defocus", unit="µm", rmse=0.1)
    ax = fig.axes[0]
    scatter = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatter) == 1 and len(scatter[0].get_offsets()) == 200
    assert np.allclose(scatter[0].get_offsets()[:, 1] - scatter[0].get_offsets()[:, 0], 0.1)
    text = _texts(fig)
    assert "defocus, ground truth (µm)" in text and "rMSE 0.1 µm" in text and "n = 200" in text
    many = rng.uniform(-180, 180, 5000)
    dense = figures.predicted_vs_true(many, many, quantity="angle", unit="°", cyclic=True, note="aligned")
    assert any(isinstance(c, PolyCollection) for c in dense.axes[0].collections)  # hexagonal bins
    assert dense.axes[0].get_xlim() == (-180.0, 180.0) and "aligned" in dense.axes[0].get_title()
    # Non-finite values are dropped, not plotted.
    with_nan = figures.predicted_vs_true(np.r_[true, np.nan], np.r_[true, 1.0], quantity="d", unit="µm")
    assert len(with_nan.axes[0].collections[0].get_offsets()) == 200


def test_roc_curves_one_per_detector_with_auc():
    rng = np.random.default_rng(2)
    labels = rng.random(300) < 0.2
    good = labels + rng.normal(0, 0.5, 300)
    weak = labels * 0.2 + rng.normal(0, 0.5, 300)
    fig = figures.roc_curves(labels, {"iforest": good, "lof": weak}, label_source="truth")
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert entries[0] == f"iforest (AUC {roc_auc_score(labels, good):.3f})"
    assert entries[1] == f"lof (AUC {roc_auc_score(labels, weak):.3f})"
    assert "chance" in entries[2] and f"{labels.sum()} of 300 positive" in fig.axes[0].get_title()
    # A detector cannot be drawn against one-class labels; the figure still renders.
    single = figures.roc_curves(np.zeros(10, bool), {"x": np.arange(10.0)}, label_source="truth")
    assert len(single.axes[0].get_lines()) == 1 and _png(single)


def test_training_curves_every_slash_key_per_prefix():
    history = [
        {"epoch": 1, "model/loss": 3.0, "model/rec": 2.0, "critic/wd": -0.5, "lr": 1e-3, "seconds": 2.0},
        {"epoch": 2, "model/loss": 2.0, "model/rec": 1.5, "critic/wd": -0.2, "lr": 1e-3, "seconds": 2.0},
        {"epoch": 3, "model/loss": 1.0, "critic/wd": -0.1, "lr": 1e-4, "seconds": 2.0},
    ]
    fig = figures.training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["critic", "model"]
    model = fig.axes[1]
    lines = {line.get_label(): line for line in model.get_lines()}
    assert set(lines) == {"model/loss", "model/rec"}
    assert np.array_equal(lines["model/loss"].get_xdata(), [1, 2, 3])
    rec = lines["model/rec"].get_ydata()
    assert np.array_equal(rec[:2], [2.0, 1.5]) and np.isnan(rec[2])  # no value logged in epoch 3
    assert model.get_xlabel() == "epoch" and "3 epochs" in fig._suptitle.get_text()
    with pytest.raises(ValueError):
        figures.training_curves([{"epoch": 1, "lr": 0.1}])


def test_training_curves_per_step_for_a_one_epoch_job():
    history = [{"epoch": 1, "model/loss": 2.0, "model/rec": 1.0,
                "step_losses": {"model/loss": [3.0, 2.5, 1.5, 1.0]}}]
    fig = figures.training_curves(history)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert np.array_equal(lines["model/loss, per step"].get_ydata(), [3.0, 2.5, 1.5, 1.0])
    assert np.array_equal(lines["model/loss, per step"].get_xdata(), [1, 2, 3, 4])
    assert lines["model/loss, epoch mean"].get_xdata().tolist() == [4]  # the mean sits at the epoch's last step
    assert lines["model/rec, epoch mean"].get_xdata().tolist() == [4]
    assert ax.get_xlabel() == "training step" and "1 epoch, 4 steps" in fig._suptitle.get_text()


def test_histograms_and_scores():
    rng = np.random.default_rng(4)
    psi = rng.uniform(-180, 180, 500)
    fig = figures.angle_histogram(psi)
    counts, _ = np.histogram(psi, bins=np.arange(-180, 181, 5))
    outline = fig.axes[0].patches[0].get_xy()
    assert outline[:, 1].max() == counts.max()
    assert fig.axes[0].get_xlabel() == "psi (°)"

    errors = np.concatenate([rng.normal(0, 2, 400), [150.0]])  # one flipped particle
    err = figures.error_histogram(errors)
    assert f"rMSE {np.sqrt(np.mean(errors ** 2)):.3g}°" in err.axes[0].get_title()
    # The axis fits the errors of a few degrees, not ±180°; the one far beyond is counted in the legend.
    lo, hi = err.axes[0].get_xlim()
    assert -15 < lo < -5 and 5 < hi < 15
    beyond = int((np.abs(errors) > hi).sum())
    assert 1 <= beyond <= 5  # the flipped one and the normal tail past the 99th percentile
    assert f"{beyond} beyond ±" in err.axes[0].get_legend().get_texts()[0].get_text()

    scores = {"ensemble": rng.normal(0, 1, 400), "lof": rng.normal(0, 1, 400)}
    above = scores["ensemble"] > 2.0
    in_junk_class = np.zeros(400, bool)
    in_junk_class[:30] = True
    flag = above | in_junk_class
    hist = figures.outlier_scores(scores, 2.0, flagged=flag)
    ax = hist.axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert entries[:2] == ["ensemble (decides)", "lof"]
    assert entries[2] == (f"threshold 2\n{int(flag.sum())} of 400 flagged:\n{int(above.sum())} with the deciding "
                          f"score above it,\n{int((in_junk_class & ~above).sum())} only for being in a junk class")
    # The deciding score is filled; the threshold's colour is no detector's.
    assert ax.patches[0].get_fill() and not ax.patches[1].get_fill()
    line = ax.get_lines()[0]
    detector_colours = {tuple(np.round(p.get_edgecolor()[:3], 3)) for p in ax.patches}
    assert tuple(np.round(matplotlib.colors.to_rgb(line.get_color()), 3)) not in detector_colours
    unflagged = figures.outlier_scores(scores, 2.0)
    assert [t.get_text() for t in unflagged.axes[0].get_legend().get_texts()][2] == \
        f"threshold 2: {int(above.sum())} above it"
    labelled = figures.outlier_scores(scores, 2.0, labels=rng.random(400) < 0.1)
    assert len(labelled.axes[0].get_legend().get_texts()) == 5  # good / outlier per detector + threshold
    assert _png(labelled)


def test_direction_distribution_on_an_equal_area_map():
    """Longitude rot (wrapped), latitude 90° − tilt, disc area by weight; no legend without ambiguous classes."""
    fig = figures.direction_distribution(np.array([190.0, -20.0]), np.array([0.0, 120.0]), np.array([10, 30]),
                                         ["1", "2"])
    ax = fig.axes[0]
    assert ax.name == "mollweide" and ax.get_legend() is None
    dots = ax.collections[0]
    np.testing.assert_allclose(dots.get_offsets(), np.deg2rad([[-170.0, 90.0], [-20.0, -30.0]]))
    assert dots.get_sizes()[1] > dots.get_sizes()[0]
    assert ax.yaxis.get_major_formatter()(np.deg2rad(-30.0), 0) == "120°"  # the axis reads as tilt
    FigureCanvasAgg(fig).draw()


def test_direction_distribution_shows_the_particles_own_directions_beneath_the_classes():
    fig = figures.direction_distribution(np.array([10.0]), np.array([90.0]), np.array([5]), ["1"],
                                         particles_deg=(np.array([12.0, 8.0, 190.0]), np.array([85.0, 95.0, 90.0])))
    ax = fig.axes[0]
    particles, classes = ax.collections[0], ax.collections[1]
    np.testing.assert_allclose(particles.get_offsets(), np.deg2rad([[12.0, 5.0], [8.0, -5.0], [-170.0, 0.0]]))
    assert particles.get_zorder() < classes.get_zorder()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["particles' own directions"]
    FigureCanvasAgg(fig).draw()
