"""How close the job's 3-D priors (``--ref``) are to the truth on simulated multi-view sets.

    python benchmarks/priors_refine/priors_accuracy.py                          # 8 views and uniform, 1,800 each
    python benchmarks/priors_refine/priors_accuracy.py --views 8 --n 400 --box 32

For each ``--views`` setting it simulates the 70S ribosome map (``../shared/data``; 5 Å/voxel, its header has
none) into a scratch RELION project (SNR, junk and ~1.5 px shifts as set below), writes the true map low-passed
to ``--lowpass`` Å as the reference, runs the job with its defaults plus ``--ref`` (``relion-canon run``, measured)
and scores every good particle (``rlnCanonIsJunk`` = 0 in ``ground_truth.star``, joined on ``rlnImageName``):

* the share that gets a prior (prior columns not 999);
* the geodesic angle between its prior orientation (rlnAngleRotPrior/TiltPrior/PsiPrior) and the true one,
  both as RELION's ``Euler_angles2matrix`` (``relion_canon.geometry.projection.euler_matrix``, the matrix the
  simulator projects with, pinned against ``relion_project``): median, 90th percentile, share below 5°, over the
  particles with a prior;
* the same with the matrices transposed (the inverse rotation) and with the prior's psi negated, as
  a check on the convention: a wrong convention on one side shows as errors far smaller there than in the main
  figure;
* the angle between each particle's prior direction and its true one (the same, psi left out), overall and per
  class (median and 90th percentile), with the share of the class's particles in its dominant true view.

Prints a table; writes ``results.json`` and ``table.md`` under ``--out``. run.py imports the helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # the helpers shared by the benchmarks
from relion_project_runs import run_measured, simulate_project, tail  # noqa: E402

SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
RIBOSOME = "maps/clean70SRibosome_vol_65p.mrc"
RIBOSOME_APIX = 5.0  # Å/voxel: the header has none (benchmarks/classify SOURCES)
RIBOSOME_DIAMETER_A = 240.0
PARTICLES = "Input/particles.star"
REFERENCE = "Input/reference_lowpass.mrc"  # the map's own grid, low-passed: what the job is given
REFERENCE_BOXED = "Input/reference_lowpass_boxed.mrc"  # the same at the particles' box and pixel: RELION's --ref
JOB_DIR = "Priors/job001"
NO_PRIOR = 999.0
PRIOR_COLUMNS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def python_env() -> dict[str, str]:
    """The environment of child processes: this checkout importable whatever the working directory."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def simulation_config(views: str, args: argparse.Namespace, source: str = RIBOSOME, seed: int | None = None):
    """The set: ``views`` random views or 'uniform'; one view is seen at rot 40°, tilt 70° (the simulator's
    default single view, rot = tilt = 0, leaves rot and psi one angle)."""
    from relion_canon.simulate import SimulationConfig

    return SimulationConfig(n_particles=args.n, box=args.box, pixel_size=args.pixel_size,
                            source=str(SHARED_DATA / source), map_pixel_size=RIBOSOME_APIX,
                            views=views if views == "uniform" else int(views), rot=40.0, tilt=70.0, psi_sigma=None,
                            shift_sigma=args.shift_px * args.pixel_size, snr=args.snr, junk_fraction=args.junk,
                            seed=args.seed if seed is None else seed)


def write_references(project: Path, lowpass_A: float, box: int, pixel_size_A: float,
                     source: str = RIBOSOME, map_pixel_size_A: float = RIBOSOME_APIX,
                     names: tuple[str, str] = (REFERENCE, REFERENCE_BOXED)) -> None:
    """The true map low-passed to ``lowpass_A``: on its own grid with its voxel size in the header (the job's
    --ref), and resampled to the particles' box and pixel size (RELION's --ref, which must match the images)."""
    import mrcfile

    from relion_canon.geometry.volume import lowpass_map, resample_map
    from relion_canon.io.mrc import read_map

    data, _ = read_map(SHARED_DATA / source)
    low = lowpass_map(np.asarray(data, dtype=np.float64), map_pixel_size_A / lowpass_A).astype(np.float32)
    for name, volume, apix in ((names[0], low, map_pixel_size_A),
                               (names[1], resample_map(low, map_pixel_size_A, box, pixel_size_A), pixel_size_A)):
        with mrcfile.new(project / name, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            m.voxel_size = apix


def job_command(star: str, out: str, reference: str, threads: int) -> list[str]:
    """The job with its defaults plus the reference (``relion-canon run``, through python -m so that this
    checkout runs whatever console script is installed)."""
    return [sys.executable, "-m", "relion_canon.cli.main", "run", "--i", star, "--o", out, "--ref", reference,
            "--j", str(threads), "--quiet"]


def run_job(project: Path, threads: int, timeout: float, star: str = PARTICLES, out: str = JOB_DIR,
            reference: str = REFERENCE) -> dict:
    cmd = job_command(star, out, reference, threads)
    old = dict(os.environ)
    os.environ.update(python_env())  # run_measured starts the child with this process's environment
    try:
        measured = run_measured(cmd, project, project / "logs" / "job.out", project / "logs" / "job.err", timeout)
    finally:
        os.environ.clear()
        os.environ.update(old)
    if measured["returncode"] != 0:
        raise RuntimeError(f"the job failed ({measured['returncode']}):\n{tail(project / 'logs' / 'job.err')}")
    measured["command"] = " ".join(["relion-canon", *cmd[3:]])
    (project / "logs" / "job.json").write_text(json.dumps(measured))  # for run.py --reuse
    return measured


def joined(star_path: Path, truth) -> tuple:
    """(the job's particle table, the truth's) row for row, joined on rlnImageName."""
    from relion_canon.io.star import read_star

    table = read_star(star_path).particles
    truth = truth.set_index("rlnImageName").loc[table["rlnImageName"]].reset_index()
    return table, truth


def angles(table, columns: tuple[str, str, str]) -> np.ndarray:
    return np.stack([table[c].to_numpy(np.float64) for c in columns], axis=1)


def geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle between (n, 3) RELION Euler triplets (rot, tilt, psi), C1."""
    from relion_canon.analysis.orientation.point_group import orientation_distance_deg
    from relion_canon.geometry.projection import euler_matrix

    return orientation_distance_deg(euler_matrix(*a.T), euler_matrix(*b.T))


def summary(error: np.ndarray) -> dict:
    if not len(error):
        return {"n": 0, "median_deg": None, "p90_deg": None, "under_5deg": None}
    return {"n": int(len(error)), "median_deg": float(np.median(error)), "p90_deg": float(np.percentile(error, 90)),
            "under_5deg": float(np.mean(error < 5.0)), "under_10deg": float(np.mean(error < 10.0))}


def score_priors(table, truth) -> dict:
    """The priors against the truth (see the module's docstring)."""
    from relion_canon.analysis.orientation.point_group import (direction_distance_deg, directions,
                                                               orientation_distance_deg)
    from relion_canon.geometry.projection import euler_matrix

    good = truth["rlnCanonIsJunk"].to_numpy().astype(int) == 0
    prior = angles(table, PRIOR_COLUMNS)
    has = np.all(prior < NO_PRIOR - 1, axis=1)
    true = angles(truth, ANGLE_COLUMNS)
    sel = good & has
    error = geodesic_deg(prior[sel], true[sel])
    transposed = orientation_distance_deg(euler_matrix(*prior[sel].T).transpose(0, 2, 1), euler_matrix(*true[sel].T))
    negated_psi = geodesic_deg(prior[sel] * np.array([1.0, 1.0, -1.0]), true[sel])
    # Whether the angles the job writes (what relion_refine starts from) are the priors.
    same = np.allclose(angles(table, ANGLE_COLUMNS)[has], prior[has], atol=1e-3)
    # Each particle's prior direction against its own true one (the job searches every particle's direction
    # about its class's, so a class's particles carry directions of their own).
    direction_error = direction_distance_deg(directions(prior[sel, 0], prior[sel, 1]),
                                             directions(true[sel, 0], true[sel, 1]))
    per_class = {}
    if "rlnClassNumber" in table.columns:
        cls = table["rlnClassNumber"].to_numpy()[sel]
        view = truth["rlnCanonViewId"].to_numpy().astype(int)[sel]
        for number in np.unique(cls):
            mine = cls == number
            known = view[mine] >= 0
            dominant = np.bincount(view[mine][known]).argmax() if known.any() else -1
            per_class[str(int(number))] = {
                "n": int(mine.sum()), "dominant_view_share": float(np.mean(view[mine] == dominant)),
                "direction_error_median_deg": float(np.median(direction_error[mine])),
                "direction_error_p90_deg": float(np.percentile(direction_error[mine], 90)),
                "orientation_error_median_deg": float(np.median(error[mine]))}
    return {"n_particles": int(len(table)), "n_good": int(good.sum()), "n_junk": int((~good).sum()),
            "good_with_prior": float(has[good].mean()) if good.any() else None,
            "junk_with_prior": float(has[~good].mean()) if (~good).any() else None,
            "error": summary(error), "direction_error": summary(direction_error),
            "error_over_all_good": {"under_5deg": float(np.sum(error < 5.0) / max(good.sum(), 1))},
            "convention_check": {"transposed": summary(transposed), "psi_negated": summary(negated_psi)},
            "angles_equal_priors": bool(same), "per_class": per_class}


def run_setting(work: Path, views: str, args: argparse.Namespace) -> dict:
    from relion_canon.simulate import read_ground_truth

    project = work / f"priors_{views}_{args.n}_{args.box}"
    if project.exists():
        shutil.rmtree(project)
    t0 = time.perf_counter()
    simulate_project(project, simulation_config(views, args))
    write_references(project, args.lowpass, args.box, args.pixel_size)
    simulated_s = time.perf_counter() - t0
    measured = run_job(project, args.threads, args.timeout)
    report = json.loads((project / JOB_DIR / "report.json").read_text())
    table, truth = joined(project / JOB_DIR / "particles.star", read_ground_truth(project / "Input"))
    scores = score_priors(table, truth)
    orientation = report.get("orientation", {})
    return {"views": views, "n": args.n, "box": args.box, "pixel_size_A": args.pixel_size, "snr": args.snr,
            "junk": args.junk, "shift_px": args.shift_px, "lowpass_A": args.lowpass, "simulate_s": simulated_s,
            "job": measured, "classes_matched": orientation.get("n_classes_with_prior"),
            "classes": {k: v for k, v in orientation.get("classes", {}).items()}, **scores,
            "project": str(project)}


def _fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def table_text(rows: list[dict]) -> str:
    lines = ["| views | n | box | good with prior | median ° | p90 ° | < 5° (of those with prior) "
             "| < 5° (of all good) | direction median ° | direction p90 ° | classes matched | job wall s "
             "| transposed median ° | psi-negated median ° |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, c, d = r["error"], r["convention_check"], r["direction_error"]
        lines.append(f"| {r['views']} | {r['n']} | {r['box']} | {_fmt(100 * r['good_with_prior'], '.1f')} % "
                     f"| {_fmt(e['median_deg'])} | {_fmt(e['p90_deg'])} | {_fmt(100 * (e['under_5deg'] or 0))} % "
                     f"| {_fmt(100 * r['error_over_all_good']['under_5deg'])} % | {_fmt(d['median_deg'])} "
                     f"| {_fmt(d['p90_deg'])} | {r['classes_matched']} | {r['job']['wall_s']:.0f} "
                     f"| {_fmt(c['transposed']['median_deg'])} | {_fmt(c['psi_negated']['median_deg'])} |")
    return "\n".join(lines) + "\n"


def add_set_options(parser: argparse.ArgumentParser) -> None:
    """The simulated set's options, shared with run.py."""
    parser.add_argument("--n", type=int, default=1800)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=4.0, help="Å/px of the particles")
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--junk", type=float, default=0.1)
    parser.add_argument("--shift-px", type=float, default=1.5, help="shift sigma per axis, px")
    parser.add_argument("--lowpass", type=float, default=30.0, help="the reference's low-pass, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="per program run, s")
    parser.add_argument("--workdir", default=None, help="scratch projects (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch projects")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", default="8,uniform", help="comma-separated: a number of views or 'uniform'")
    add_set_options(parser)
    parser.add_argument("--out", default=str(HERE / "results" / "priors_accuracy"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="priors_", dir=args.workdir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for views in [v.strip() for v in args.views.split(",") if v.strip()]:
            rows.append(run_setting(work, views, args))
            print(f"views {views}: median {_fmt(rows[-1]['error']['median_deg'])}°, "
                  f"{_fmt(100 * rows[-1]['good_with_prior'])} % with a prior", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = table_text(rows)
    print(text)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
