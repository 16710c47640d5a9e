"""The figures that show particle images: grids of input, canonical and true images side by side, the worst
canonical images, and class averages (large with a scale bar, or a gallery ranked by population with junk
classes marked). Each image is scaled to its own 1st-99th percentile, so noisy and clean images both show.
"""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from relion_canon.analysis.class_summary import ClassSummary
from relion_canon.analysis.figures import new_figure

_GREY = colormaps["gray"].with_extremes(bad="white")  # white lines between the tiles of an image grid


def image_grid(
    rows: Mapping[str, np.ndarray],
    *,
    title: str,
    column_titles: Sequence[str] | None = None,
) -> Figure:
    """Paper A, Fig. 2/3: one row per named (K, H, W) image set (e.g. input / canonical / ground truth),
    K columns; each image is scaled to its own 1st-99th percentile so that noisy and clean images both
    show their content. Rows of another box size (a Fourier-cropped canonical next to its input) are
    resized to the largest box, so that every tile shows the same field of view."""
    named = [(name, np.asarray(images, dtype=np.float64)) for name, images in rows.items()
             if images is not None and len(images)]
    if not named:
        raise ValueError("image_grid needs at least one non-empty row of images")
    k = max(len(images) for _, images in named)
    size = max(images.shape[-1] for _, images in named)
    gap = max(1, size // 16)
    step = size + gap
    # One mosaic in one Axes: a grid of Axes costs ~50 ms each to build, more than drawing all the pixels.
    mosaic = np.full((len(named) * step - gap, k * step - gap), np.nan)
    for r, (_, images) in enumerate(named):
        for c, img in enumerate(images):
            mosaic[r * step : r * step + size, c * step : c * step + size] = _display_scale(_resize(img, size))
    cell, left, top, bottom = 1.3, 1.9, 0.45 + (0.45 if column_titles is not None else 0.0), 0.1
    # At least wide enough for the title (~0.1 in per character at the default size).
    width = max(left + k * cell + 0.1, 0.1 * len(title) + 0.5)
    height = top + len(named) * cell + bottom
    fig = new_figure(width, height, layout=None)
    ax = fig.add_axes((left / width, bottom / height, k * cell / width, len(named) * cell / height))
    ax.imshow(mosaic, cmap=_GREY, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    for r, (name, _) in enumerate(named):
        ax.text(-gap, r * step + size / 2, name, ha="right", va="center", fontsize="small")
    for c, text in enumerate(list(column_titles or [])[:k]):
        ax.text(c * step + size / 2, -gap, text, ha="center", va="bottom", fontsize="small")
    fig.suptitle(title)
    return fig


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    from scipy import ndimage

    return ndimage.zoom(img, (size / img.shape[-2], size / img.shape[-1]), order=1, grid_mode=True, mode="nearest")


def _display_scale(img: np.ndarray) -> np.ndarray:
    """Map the 1st-99th percentile to [0, 1] (a constant image shows mid-grey)."""
    lo, hi = np.percentile(img, [1, 99])
    if not hi > lo:
        return np.full_like(img, 0.5)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def worst_cases(rows: Mapping[str, np.ndarray], mse: Sequence[float], star_rows: Sequence[int]) -> Figure:
    """Paper A, Fig. 3: the particles whose canonical image is furthest from the truth, worst first."""
    titles = [f"row {int(r)}\nMSE {float(m):.3g}" for r, m in zip(star_rows, mse)]
    return image_grid(rows, title="Worst canonical images (highest MSE against the clean truth)", column_titles=titles)


def class_averages(averages: Mapping[int, np.ndarray], pixel_size_A: float | None = None) -> Figure:
    """Canonical (unrotated) averages, per class number (0 = all particles), laid out large (up to 4 a row),
    each with a scale bar in Å when the pixel size is known."""
    items = sorted(averages.items())
    if not items:
        raise ValueError("no class averages to show")
    n_cols = min(4, len(items))
    n_rows = -(-len(items) // n_cols)
    cell = 3.0 if len(items) > 1 else 5.0
    fig = new_figure(n_cols * cell + 0.3, n_rows * (cell + 0.4) + 0.7, layout=None)
    fig.suptitle("Canonical class averages (in the learned frame)")
    size = max(np.asarray(a).shape[-1] for _, a in items)
    for k, (number, image) in enumerate(items):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        img = np.asarray(image, dtype=np.float64)
        ax.imshow(_display_scale(_resize(img, size)), cmap=_GREY, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("all particles" if number == 0 else f"class {number}", fontsize="medium")
        if pixel_size_A:
            _scale_bar(ax, size, pixel_size_A * img.shape[-1] / size)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.6 / fig.get_figheight(), hspace=0.25,
                        wspace=0.06)
    return fig


def _scale_bar(ax: Any, size: int, pixel_size_A: float) -> None:
    """A white bar of a round length (about a quarter of the box) in the lower left, labelled in Å."""
    width_A = size * pixel_size_A
    target = width_A / 4
    length = max((x for x in (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000) if x <= target), default=target)
    pixels = length / pixel_size_A
    x0, y0 = 0.06 * size, 0.9 * size
    ax.plot([x0, x0 + pixels], [y0, y0], color="white", lw=4, solid_capstyle="butt")
    ax.plot([x0, x0 + pixels], [y0, y0], color="black", lw=1, solid_capstyle="butt")
    ax.text(x0 + pixels / 2, y0 - 0.03 * size, f"{length:g} Å", color="white", ha="center", va="bottom",
            fontsize="small", fontweight="bold")


def class_gallery(averages: Mapping[int, np.ndarray], summaries: Mapping[int, ClassSummary],
                  columns: int = 6) -> Figure:
    """The class averages, largest class first, each titled with its number, particle count and share, and
    resolution; classes judged junk framed in red and titled so."""
    numbers = sorted((c for c in averages if c in summaries), key=lambda c: (-summaries[c].n_particles, c))
    if not numbers:
        raise ValueError("no class averages with a class summary to show")
    size = max(np.asarray(averages[c]).shape[-1] for c in numbers)
    n_cols = min(columns, len(numbers))
    n_rows = -(-len(numbers) // n_cols)
    cell = 1.6
    # Inches above the first row: the figure's title, then the first row's two-line axes titles. A band given as
    # a fraction of the figure's height shrinks as rows are added, and the title ran into the first row's.
    header = 0.95
    fig = new_figure(n_cols * cell + 0.2, n_rows * (cell + 0.55) + header, layout=None)
    fig.suptitle(f"Class averages by population ({len(numbers)} classes)", y=1 - 0.08 / fig.get_figheight(),
                 va="top")
    for k, number in enumerate(numbers):
        summary = summaries[number]
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        ax.imshow(_display_scale(_resize(np.asarray(averages[number], np.float64), size)), cmap=_GREY,
                  vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        resolution = "res ?" if summary.resolution_A is None else f"{summary.resolution_A:.1f} Å"
        title = f"class {number}{' JUNK' if summary.is_junk else ''}\n" \
                f"{summary.n_particles} ({100 * summary.fraction:.1f}%), {resolution}"
        ax.set_title(title, fontsize="small", color="red" if summary.is_junk else "black")
        for spine in ax.spines.values():
            spine.set_visible(bool(summary.is_junk))
            spine.set_edgecolor("red")
            spine.set_linewidth(3)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - header / fig.get_figheight(), hspace=0.45,
                        wspace=0.08)
    return fig


def orientation_matches(matched: Mapping[int, tuple[np.ndarray, np.ndarray]],
                        reports: Mapping[str, Mapping[str, Any]], counts: Mapping[int, int],
                        columns: int = 3) -> Figure:
    """Each class average (left) beside the reference's projection it was matched to (right, as the average
    shows it: turned by the in-plane offset and moved by the shift), largest class first, titled with the
    direction (rot, tilt), in-plane offset and shift, and the confidence: correlation peak, its margin over the
    best distinct direction, FRC resolution against the projection. Ambiguous matches (no prior given) are
    framed and titled in red with the reason."""
    numbers = sorted(matched, key=lambda c: (-counts.get(c, 0), c))
    if not numbers:
        raise ValueError("no matched classes to show")
    size = max(np.asarray(matched[c][0]).shape[-1] for c in numbers)
    gap = max(1, size // 16)
    n_cols = min(columns, len(numbers))
    n_rows = -(-len(numbers) // n_cols)

    def reason_lines(c: int) -> int:
        facts = reports.get(str(c), {})
        return len(textwrap.wrap(str(facts.get("reason") or ""), 50)) if facts.get("ambiguous") else 0

    # Laid out by hand: each pair of images 3 in wide under a title block of four short lines (more for the
    # reason of an ambiguous match), so that neither neighbours' titles nor rows overlap.
    rows = [numbers[i:i + n_cols] for i in range(0, len(numbers), n_cols)]
    title_h = [0.75 + 0.16 * max(reason_lines(c) for c in row) for row in rows]
    pair_w, pair_h, margin, top = 3.0, 1.45, 0.25, 0.5
    width = n_cols * (pair_w + margin) + margin
    height = top + sum(title_h) + n_rows * pair_h + 0.1
    fig = new_figure(width, height, layout=None)
    fig.suptitle("Class averages (left) and the reference's projections they matched (right)", y=1 - 0.12 / height)
    for k, number in enumerate(numbers):
        average, projection = (_display_scale(_resize(np.asarray(a, np.float64), size)) for a in matched[number])
        pair = np.full((size, 2 * size + gap), np.nan)
        pair[:, :size], pair[:, size + gap:] = average, projection
        row, col = divmod(k, n_cols)
        x0 = margin + col * (pair_w + margin)
        y0 = height - top - sum(title_h[:row + 1]) - (row + 1) * pair_h
        ax = fig.add_axes((x0 / width, y0 / height, pair_w / width, pair_h / height))
        ax.imshow(pair, cmap=_GREY, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        facts = reports.get(str(number), {})
        ambiguous = bool(facts.get("ambiguous"))
        shift = facts.get("shift_px") or (0.0, 0.0)
        nan = float("nan")
        lines = [f"class {number}, {counts.get(number, 0)} particles" + (": AMBIGUOUS, no prior" if ambiguous else ""),
                 f"rot {facts.get('rot_deg', nan):.1f}°, tilt {facts.get('tilt_deg', nan):.1f}°",
                 f"in-plane {facts.get('psi_offset_deg', nan):+.1f}°, shift ({shift[0]:.1f}, {shift[1]:.1f}) px",
                 f"peak {facts.get('peak', nan):.3f}, margin {facts.get('margin', nan):.3f}, "
                 f"FRC {facts.get('frc_resolution_A', nan):.0f} Å"]
        if ambiguous and facts.get("reason"):
            lines += textwrap.wrap(str(facts["reason"]), 50)
        ax.set_title("\n".join(lines), fontsize="x-small", color="red" if ambiguous else "black")
        for spine in ax.spines.values():
            spine.set_visible(ambiguous)
            spine.set_edgecolor("red")
            spine.set_linewidth(3)
    return fig
