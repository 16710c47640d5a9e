"""image_figures: particle images and class averages are shown as given, each scaled to its own range, labelled,
and render headless (Agg)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from relion_canon.analysis import image_figures


def _grid(fig):
    """(mosaic, texts) of an image grid."""
    (ax,) = fig.axes
    return np.ma.filled(ax.images[0].get_array(), np.nan), [t.get_text() for t in ax.texts]


def test_image_grid_and_worst_cases():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 16, 16)), rng.normal(size=(3, 8, 8))
    fig = image_figures.image_grid({"input": a, "canonical": b}, title="grid", column_titles=[f"c{i}" for i in range(5)])
    mosaic, texts = _grid(fig)
    gap = 1
    assert mosaic.shape == (2 * 16 + gap, 5 * 16 + 4 * gap)
    # Each tile is its image, its own 1st-99th percentile mapped to [0, 1].
    lo, hi = np.percentile(a[1], [1, 99])
    assert np.allclose(mosaic[:16, 17:33], np.clip((a[1] - lo) / (hi - lo), 0, 1))
    # The 8 px row is shown at 16 px (same field of view); missing tiles stay empty (white).
    assert np.isfinite(mosaic[17:33, :16]).all() and np.isnan(mosaic[17:33, 3 * 17 :]).all()
    assert texts == ["input", "canonical", "c0", "c1", "c2", "c3", "c4"]
    assert fig._suptitle.get_text() == "grid"
    FigureCanvasAgg(fig).draw()
    with pytest.raises(ValueError):
        image_figures.image_grid({"empty": np.zeros((0, 4, 4))}, title="x")
    worst = image_figures.worst_cases({"canonical": b, "truth": b}, [1.9, 0.5, 0.2], [12, 3, 40])
    assert _grid(worst)[1][2:] == ["row 12\nMSE 1.9", "row 3\nMSE 0.5", "row 40\nMSE 0.2"]
    assert "Worst" in worst._suptitle.get_text()


def test_class_averages_large_with_a_scale_bar():
    img = np.outer(np.hanning(16), np.hanning(16))
    fig = image_figures.class_averages({2: img, 0: img * 2}, pixel_size_A=3.0)
    assert [ax.get_title() for ax in fig.axes] == ["all particles", "class 2"]
    assert fig.get_figwidth() >= 6  # not one small image on an empty page
    # 16 px of 3 Å: a round bar of about a quarter of the 48 Å box, labelled in Å.
    assert [t.get_text() for t in fig.axes[0].texts] == ["10 Å"]
    bar = fig.axes[0].get_lines()[0].get_xdata()
    assert bar[1] - bar[0] == pytest.approx(10 / 3)
    assert not image_figures.class_averages({1: img}).axes[0].get_lines()  # no pixel size: no bar
    with pytest.raises(ValueError):
        image_figures.class_averages({})


def test_class_gallery_largest_first_with_junk_marked():
    from relion_canon.analysis.class_summary import class_summaries

    img = np.random.default_rng(0).normal(size=(16, 16))
    reports = {"1": {"n_particles": 10, "resolution_A": 9.0}, "2": {"n_particles": 30, "is_junk": True},
               "3": {"n_particles": 20, "alignment": [{"resolution_A": 12.5}]}}
    fig = image_figures.class_gallery({1: img, 2: img, 3: img}, class_summaries(reports, 60))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["class 2 JUNK\n30 (50.0%), res ?", "class 3\n20 (33.3%), 12.5 Å", "class 1\n10 (16.7%), 9.0 Å"]
    junk = fig.axes[0]
    assert junk.title.get_color() == "red" and all(s.get_visible() for s in junk.spines.values())
    assert not any(s.get_visible() for s in fig.axes[1].spines.values())
    FigureCanvasAgg(fig).draw()
    with pytest.raises(ValueError):
        image_figures.class_gallery({0: img}, {})


@pytest.mark.parametrize("n_classes", [3, 50])
def test_the_gallery_title_clears_the_first_rows_titles(n_classes):
    from relion_canon.analysis.class_summary import class_summaries

    img = np.random.default_rng(1).normal(size=(16, 16))
    reports = {str(c): {"n_particles": 100 - c, "resolution_A": 9.0} for c in range(1, n_classes + 1)}
    fig = image_figures.class_gallery({c: img for c in range(1, n_classes + 1)}, class_summaries(reports, 5000))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    first_row_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:6])
    assert title_bottom > first_row_top  # display coordinates: y grows upwards
    assert fig._suptitle.get_window_extent(renderer).y1 <= fig.bbox.y1  # and stays on the page
