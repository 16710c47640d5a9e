"""relion_canon's job as a 2D classifier, scored against the truth and against RELION 3.1 Class2D.

    python benchmarks/classify/run.py                                    # the full grid (many hours on 2 cores)
    python benchmarks/classify/run.py --views 5 --snr 0.1 --n 2000 --source 70S
    python benchmarks/classify/run.py --smoke                            # CI size: well under a minute

For every setting (--source × --views × --snr × --n) it simulates one set into a scratch RELION project and
runs on the same particles, one after the other: (a) ``ours``: the External job with its defaults; (b)
``ours_true_classes``: the same job with ``--per_class yes`` on a copy of the particles whose
``rlnClassNumber`` is the true view + 1 (junk in a random true class: a perfect classifier that cannot see
junk), the upper bound; (c) ``relion``: ``relion_refine`` Class2D with K = 2 × views. See README.md for the
metrics.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the helpers shared by the benchmarks
sys.path.insert(0, str(HERE))
import class_metrics as cm  # noqa: E402
from relion_project_runs import (  # noqa: E402
    add_run_options,
    auc_or_none,
    external_command,
    relion_class2d_command,
    run_measured,
    simulate_project,
    tail,
)

SHARED_DATA = (HERE.parents[2] / "shared" / "data").resolve()
PARTICLES = "Input/particles.star"
TRUE_CLASSES = "Input/particles_true_classes.star"
RELION_OUT = "Class2D/run"
METHODS = ("ours", "ours_true_classes", "relion")
JOB_DIRS = {"ours": "External/job001/", "ours_true_classes": "External/job002/"}
# The realistic protocol's defocus; shifts of about 1.5 px per axis.
DEFOCUS_RANGE_A = (5000.0, 25000.0)
SHIFT_PX = 1.5
PAIR_MAX_ANGLE_DEG = 5.0
MAX_PAIRS = 20_000


@dataclass(frozen=True)
class Source:
    """A molecule to simulate and the pixel size that frames it in a 64 px box."""

    path: str  # relative to ../shared/data, or "phantom"
    pixel_size_64_A: float
    diameter_A: float  # the particle's largest extent
    map_pixel_size_A: float | None = None  # when the map header lacks one


SOURCES = {
    # The 70S map's header has no voxel size; 5 Å/voxel makes its ~47-voxel density a ~240 Å ribosome
    # (benchmarks/papers/paper_data.py). 4 Å/px is the multi-view anchors' setting (../shared/docs/benchmarks.md).
    "70S": Source("maps/clean70SRibosome_vol_65p.mrc", 4.0, 240.0, map_pixel_size_A=5.0),
    # CXCR4, 127 Å across: 2.5 Å/px (the realistic protocol's) holds it in 64 px.
    "8zpm": Source("models/8zpm.cif", 2.5, 127.0),
    # The built-in phantom spans 0.6 of the box.
    "phantom": Source("phantom", 2.5, 96.0),
}


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def pixel_size_A(source: Source, box: int) -> float:
    """The pixel size that frames the molecule in ``box`` as ``pixel_size_64_A`` does in 64 px."""
    return source.pixel_size_64_A * 64 / box


def relion_diameter_A(source: Source, box: int) -> float:
    """RELION's mask diameter: a margin around the particle, inside the box."""
    return min(1.2 * source.diameter_A, 0.95 * box * pixel_size_A(source, box))


def simulation_config(source_name: str, views: str, snr: float, n: int, args: argparse.Namespace):
    from relion_canon.simulate import SimulationConfig

    source = SOURCES[source_name]
    apix = pixel_size_A(source, args.box)
    path = source.path if source.path == "phantom" else str(SHARED_DATA / source.path)
    return SimulationConfig(n_particles=n, box=args.box, pixel_size=apix, source=path,
                            map_pixel_size=source.map_pixel_size_A, views=views if views == "uniform" else int(views),
                            psi_sigma=None, shift_sigma=SHIFT_PX * apix, defocus_range=DEFOCUS_RANGE_A, snr=snr,
                            junk_fraction=args.junk, seed=args.seed)


def true_views(truth, n_uniform_views: int, seed: int) -> tuple[np.ndarray, int]:
    """Each particle's true view (−1 for junk) and the number of views; for uniform orientations the views are
    k-means clusters of the true viewing directions."""
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    view = truth["rlnCanonViewId"].to_numpy().astype(int)
    if not (view[~junk] < 0).any():
        return np.where(junk, -1, view), int(view.max()) + 1
    from sklearn.cluster import KMeans

    directions = cm.viewing_directions(truth["rlnAngleRot"].to_numpy(float), truth["rlnAngleTilt"].to_numpy(float))
    labels = KMeans(n_uniform_views, n_init=4, random_state=seed).fit_predict(directions[~junk])
    view = np.full(len(truth), -1)
    view[~junk] = labels
    return view, n_uniform_views


def write_true_classes(project: Path, view: np.ndarray, n_views: int, seed: int) -> None:
    """A copy of the particles with rlnClassNumber = true view + 1; junk in a random true class."""
    from relion_canon.io.star import read_star, write_star

    star = read_star(project / PARTICLES)
    rng = np.random.default_rng(seed)
    numbers = np.where(view >= 0, view, rng.integers(0, n_views, len(view))) + 1
    table = star.particles.copy()
    table["rlnClassNumber"] = numbers
    write_star(star.with_particles(table), project / TRUE_CLASSES)


def run_ours(project: Path, method: str, args: argparse.Namespace) -> dict:
    star = TRUE_CLASSES if method == "ours_true_classes" else PARTICLES
    job = project / JOB_DIRS[method]
    cmd = [*external_command(), "--o", JOB_DIRS[method], "--in_parts", star, "--j", str(args.threads)]
    if method == "ours_true_classes":
        cmd += ["--per_class", "yes"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print(f"  {method}: {' '.join(cmd)}", flush=True)
    r = run_measured(cmd, project, job / "run.out", job / "run.err", args.timeout)
    if not (job / "RELION_JOB_EXIT_SUCCESS").exists():
        raise RuntimeError(f"{method}: relion_canon_external did not succeed ({r['returncode']}):\n"
                           f"{tail(job / 'run.err')}")
    return {**r, "command": " ".join(cmd)}


def run_relion(project: Path, classes: int, diameter_A: float, args: argparse.Namespace) -> dict:
    cmd = relion_class2d_command(PARTICLES, RELION_OUT, classes, args.relion_iter, diameter_A, args.threads)
    print(f"  relion: {' '.join(cmd)}", flush=True)
    (project / "Class2D").mkdir(exist_ok=True)
    r = run_measured(cmd, project, project / "Class2D/run.out", project / "Class2D/run.err", args.timeout)
    if r["returncode"] != 0:
        raise RuntimeError(f"relion_refine failed ({r['returncode']}):\n{tail(project / 'Class2D/run.err')}")
    return {**r, "command": " ".join(cmd)}


def reported_classes(report: dict) -> int | None:
    """The job's own count of classes, when its report.json gives one."""
    for key in ("n_views_found", "n_classes"):
        if isinstance(report.get(key), int):
            return report[key]
    classes = report.get("classes")
    return len(classes) if isinstance(classes, (dict, list)) else None


def ours_outputs(project: Path, method: str, names) -> dict:
    """Per-particle class, psi, junk score, defocus and selection of one of our runs, in ``names``' order."""
    from relion_canon.io.star import read_star

    job = project / JOB_DIRS[method]
    parts = read_star(job / "particles.star").particles.set_index("rlnImageName").loc[names]
    selected = set(read_star(job / "particles_selected.star").particles["rlnImageName"])
    report = json.loads((job / "report.json").read_text())
    # Until the job classifies, every particle is in one class (no rlnClassNumber column).
    cls = parts["rlnClassNumber"].to_numpy(int) if "rlnClassNumber" in parts.columns else np.ones(len(parts), int)
    return {"cls": cls, "psi": parts["rlnAnglePsi"].to_numpy(float),
            "junk_score": parts["rlnParticleSelectZScore"].to_numpy(float),
            "defocus_A": parts["rlnCanonDefocus"].to_numpy(float) if "rlnCanonDefocus" in parts.columns else None,
            "kept": np.array([n in selected for n in names]), "reported_classes": reported_classes(report)}


def relion_outputs(project: Path, names, iterations: int, drop_factor: float) -> dict:
    """The same from RELION's last iteration; its selection drops the classes that
    :func:`class_metrics.relion_kept_classes` rejects."""
    import starfile

    from relion_canon.io.star import read_star

    stem = project / f"{RELION_OUT}_it{iterations:03d}"
    parts = read_star(f"{stem}_data.star").particles.set_index("rlnImageName").loc[names]
    model = starfile.read(f"{stem}_model.star", always_dict=True)["model_classes"]
    cls = parts["rlnClassNumber"].to_numpy(int)
    resolution = {i + 1: float(r) for i, r in enumerate(model["rlnEstimatedResolution"])}
    numbers, counts = np.unique(cls, return_counts=True)
    kept_classes = cm.relion_kept_classes(resolution, dict(zip(numbers.tolist(), counts.tolist())), drop_factor)
    return {"cls": cls, "psi": parts["rlnAnglePsi"].to_numpy(float),
            # Class2D writes no Z-score: its lowest-confidence particles stand in (as in vs_relion).
            "junk_score": -parts["rlnMaxValueProbDistribution"].to_numpy(float),
            "junk_score_loglikeli": -parts["rlnLogLikeliContribution"].to_numpy(float),
            "junk_score_class_resolution": np.array([resolution[c] for c in cls]),
            "defocus_A": None, "kept": np.isin(cls, sorted(kept_classes)), "reported_classes": None,
            "relion_kept_classes": sorted(kept_classes)}


def score_method(out: dict, truth, view: np.ndarray, pairs: np.ndarray, true_diff: np.ndarray,
                 min_pair: int) -> dict:
    """Every accuracy figure of one method against the truth (rows in the truth's order)."""
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    good = ~junk
    cls_good, psi_good = out["cls"][good], out["psi"][good]
    row = {"classes_found": cm.classes_found(out["cls"]), "classes_reported": out["reported_classes"],
           "purity": cm.class_purity(cls_good, view[good]),
           "completeness": cm.view_completeness(cls_good, view[good]),
           **cm.psi_within_classes(cls_good, view[good], psi_good, truth["rlnAnglePsi"].to_numpy(float)[good],
                                   min_pair),
           **cm.pair_scores(cls_good, psi_good, pairs, true_diff),
           "junk_auc": auc_or_none(junk.astype(int), out["junk_score"]),
           **cm.selection_scores(junk, out["kept"]), "defocus_rmse_um": None}
    discrete = truth["rlnCanonViewId"].to_numpy()[good]
    if len(discrete) and (discrete >= 0).all():
        # Views closer than the pair metric's angle counted as one (random views can fall that close).
        first = truth[good].groupby("rlnCanonViewId")[["rlnAngleRot", "rlnAngleTilt"]].first().sort_index()
        directions = cm.viewing_directions(first["rlnAngleRot"].to_numpy(float), first["rlnAngleTilt"].to_numpy(float))
        merged = cm.views_merged_within(directions, PAIR_MAX_ANGLE_DEG)
        row["purity_views_within_5deg_as_one"] = cm.class_purity(cls_good, merged[discrete])
    for key in ("junk_score_loglikeli", "junk_score_class_resolution"):
        if key in out:
            row["junk_auc_" + key.removeprefix("junk_score_")] = auc_or_none(junk.astype(int), out[key])
    if "relion_kept_classes" in out:
        row["relion_kept_classes"] = out["relion_kept_classes"]
    if out["defocus_A"] is not None:
        true_def = 0.5 * (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy(float)[good]
        row["defocus_rmse_um"] = float(np.sqrt(np.mean((out["defocus_A"][good] - true_def) ** 2)) / 1e4)
    return row


def _measured(r: dict) -> dict:
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
            "load_average": r["load_average_mean"], "command": r["command"],
            "rss_detail_mb": {k: r[k] for k in ("peak_rss_sampled_tree_mb", "peak_rss_hwm_mb")}}


def run_setting(work: Path, source: str, views: str, snr: float, n: int, args: argparse.Namespace) -> dict:
    from relion_canon.simulate import read_ground_truth

    tag = f"{source}_v{views}_snr{snr:g}_n{n}"
    project = work / tag
    config = simulation_config(source, views, snr, n, args)
    print(f"[{tag}] simulating {n} particles ({config.box} px, {config.pixel_size:g} Å/px, views {views}, "
          f"SNR {snr:g}, {args.junk:.0%} junk, shifts σ {config.shift_sigma:.2f} Å)", flush=True)
    t0 = time.perf_counter()
    simulate_project(project, config)
    truth = read_ground_truth(project / "Input")
    names = truth["rlnImageName"].to_numpy()
    view, n_views = true_views(truth, args.uniform_views, args.seed)
    write_true_classes(project, view, n_views, args.seed)
    row: dict = {"setting": tag, "source": source, "views": views, "snr": snr, "n": n, "n_views": n_views,
                 "box": config.box, "pixel_size_A": config.pixel_size, "shift_sigma_A": config.shift_sigma,
                 "junk": args.junk, "simulate_s": time.perf_counter() - t0, "methods": {}}

    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    good_truth = truth[good]
    rot, tilt = good_truth["rlnAngleRot"].to_numpy(float), good_truth["rlnAngleTilt"].to_numpy(float)
    pairs = cm.close_pairs(cm.viewing_directions(rot, tilt), PAIR_MAX_ANGLE_DEG, MAX_PAIRS, args.seed)
    true_diff = cm.true_psi_difference_deg(rot, tilt, good_truth["rlnAnglePsi"].to_numpy(float), pairs)

    measured = {}
    if not args.skip_relion:
        k = args.relion_classes_per_view * n_views
        measured["relion"] = run_relion(project, k, relion_diameter_A(SOURCES[source], config.box), args)
        row["relion_classes"] = k
    for method in ("ours", "ours_true_classes"):
        measured[method] = run_ours(project, method, args)
    for method, r in measured.items():
        out = (relion_outputs(project, names, args.relion_iter, args.relion_drop_factor) if method == "relion"
               else ours_outputs(project, method, names))
        row["methods"][method] = {**score_method(out, truth, view, pairs, true_diff, args.min_pair), **_measured(r)}
        if "relion" in measured:
            rel = measured["relion"]
            row["methods"][method]["relion_over_wall"] = rel["wall_s"] / r["wall_s"]
            row["methods"][method]["relion_over_cpu"] = rel["cpu_s"] / max(r["cpu_s"], 1e-9)
    for method, m in row["methods"].items():
        print(f"[{tag}] {method}: purity {_fmt(m['purity'], '.3f')}, psi rMSE {_fmt(m['psi_rmse'], '.2f')}°, "
              f"junk AUC {_fmt(m['junk_auc'], '.3f')}, wall {m['wall_s']:.1f} s", flush=True)
    return row


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


# (column heading, key in a method's results, format, scale)
COLUMNS = [
    ("classes found (job's)", None, "", 1), ("purity", "purity", ".3f", 1),
    ("purity, views ≤ 5° apart as one", "purity_views_within_5deg_as_one", ".3f", 1),
    ("completeness", "completeness", ".3f", 1),
    ("psi rMSE °", "psi_rmse", ".2f", 1), ("psi median °", "psi_median", ".2f", 1),
    ("psi scored %", "psi_scored_share", ".1f", 100), ("pairs same class", "pair_same_class", ".3f", 1),
    ("pair Δpsi rMSE °", "pair_psi_rmse", ".2f", 1), ("junk AUC", "junk_auc", ".3f", 1),
    ("good kept %", "good_kept", ".1f", 100), ("junk in selected %", "junk_in_selected", ".1f", 100),
    ("defocus rMSE µm", "defocus_rmse_um", ".3f", 1), ("wall s", "wall_s", ".1f", 1), ("CPU s", "cpu_s", ".1f", 1),
    ("peak RSS MB", "peak_rss_mb", ".0f", 1), ("RELION/this wall", "relion_over_wall", ".1f", 1),
    ("RELION/this CPU", "relion_over_cpu", ".1f", 1),
]


def _cell(m: dict, key: str | None, spec: str, scale: float) -> str:
    if key is None:
        own = m.get("classes_reported")
        return f"{m['classes_found']}" + ("" if own is None else f" ({own})")
    value = m.get(key)
    return _fmt(None if value is None else value * scale, spec)


def table(rows: list[dict]) -> str:
    lines = ["| setting | method | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        for method in METHODS:
            if method in r["methods"]:
                cells = [_cell(r["methods"][method], *c[1:]) for c in COLUMNS]
                lines.append(f"| {r['setting']} | {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ours = the job's defaults; ours_true_classes = the job given the true views as classes "
                 "(--per_class; the upper bound); relion = RELION 3.1 Class2D, K = "
                 "classes-per-view × views. Metrics: benchmarks/classify/README.md.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(max(9, 1.2 * len(rows) + 6), 4))
    x = np.arange(len(rows))
    width = 0.8 / len(METHODS)
    for ax, (key, label) in zip(axes, [("purity", "class purity"), ("psi_rmse", "psi rMSE within classes (°)"),
                                       ("junk_auc", "junk AUC")]):
        for i, method in enumerate(METHODS):
            values = [r["methods"].get(method, {}).get(key) for r in rows]
            ax.bar(x + (i - 1) * width, [np.nan if v is None else v for v in values], width, label=method)
        ax.set_xticks(x)
        ax.set_xticklabels([r["setting"] for r in rows], rotation=45, ha="right", fontsize=6)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


SMOKE = {"views": "3", "snr": "0.1", "n": "150", "source": "phantom", "box": 32, "relion_iter": 3,
         "relion_classes_per_view": 1, "min_pair": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", default="5,20,uniform", help="views per set (numbers or 'uniform'), comma-separated")
    parser.add_argument("--snr", default="0.1,0.05", help="SNRs, comma-separated")
    parser.add_argument("--n", default="2000,20000", help="particle counts, comma-separated")
    parser.add_argument("--source", default="70S,8zpm", help=f"molecules, comma-separated, from {', '.join(SOURCES)}")
    parser.add_argument("--junk", type=float, default=0.1, help="junk fraction")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--uniform-views", type=int, default=25,
                        help="for uniform orientations: how many k-means clusters of directions count as views")
    parser.add_argument("--relion-classes-per-view", type=int, default=2, help="RELION's K = this × views")
    parser.add_argument("--relion-iter", type=int, default=20)
    parser.add_argument("--relion-drop-factor", type=float, default=1.25,
                        help="RELION's selection drops classes whose resolution is worse than this × the median")
    parser.add_argument("--min-pair", type=int, default=cm.MIN_PAIR_PARTICLES,
                        help="smallest (class, true view) pair scored for psi")
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="CI size: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    add_run_options(parser, HERE / "results")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = [s for s in _split(args.source) if s not in SOURCES]
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    return args


def machine_info(args: argparse.Namespace) -> dict:
    import torch

    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__,
            "ours_device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else f"CPU ({args.threads} threads)")}
    if not args.skip_relion:
        version = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout.strip()
        info["relion"] = version.splitlines()[0] if version else "unknown"
    return info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.skip_relion and shutil.which("relion_refine") is None:
        sys.exit("relion_refine not on PATH: install RELION 3.1 (apt-get install relion), or pass --skip-relion")
    grid = list(itertools.product(_split(args.source), _split(args.views), [float(s) for s in _split(args.snr)],
                                  [int(s) for s in _split(args.n)]))
    work = Path(tempfile.mkdtemp(prefix="classify_", dir=args.workdir))
    rows = []
    try:
        for source, views, snr, n in grid:
            rows.append(run_setting(work, source, views, snr, n, args))
    finally:
        if args.keep:
            print(f"Kept the scratch projects in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "workdir", "keep")}
    (out / "results.json").write_text(json.dumps({"settings": settings, "machine": machine_info(args), "rows": rows},
                                                 indent=2, default=str))
    (out / "table.md").write_text(text + "\n")
    plot(rows, out / "classes.png")
    print(f"Wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'classes.png'}")


if __name__ == "__main__":
    main()
