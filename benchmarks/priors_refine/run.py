"""RELION 3.1 3D auto-refine started from the job's priors (local searches) against the same refinement with
global searches from scratch, on the same particles and the same reference, in one run.

    python benchmarks/priors_refine/run.py                                  # 8 views, 1,800 particles, 64 px
    python benchmarks/priors_refine/run.py --views uniform --n 1000
    python benchmarks/priors_refine/run.py --smoke                          # tests/test_benchmarks_priors_refine.py

Steps (one scratch RELION project, see README.md):

1. simulate the 70S map (priors_accuracy.py's set: SNR, junk, ~1.5 px shifts), write the true map low-passed to
   ``--lowpass`` Å, on its own grid (the job's ``--ref``) and at the particles' box and pixel (RELION's ``--ref``);
2. the job with its defaults plus ``--ref`` (``relion-canon run``); its priors scored against the truth;
3. the particles that got a prior (``rlnAngleTiltPrior`` < 999, as README tells users to select them) in two
   copies: ``scratch.star``, the simulated rows as extracted (no angles, no origins), and ``priors.star``, the
   job's rows (angles, priors, origins);
4. ``mpirun -n 3 relion_refine_mpi --auto_refine --split_random_halves`` (3.1 needs 3 MPI ranks for split
   halves: a leader and one per half) on each, one after the other, measured: (a) ``global``: ``--healpix_order 2``
   on scratch.star; (b) ``local``: ``--healpix_order 4 --auto_local_healpix_order 4`` on priors.star: in 3.1 an
   auto-refine whose first sampling is at or finer than --auto_local_healpix_order searches locally from the
   first iteration, about the prior columns, with sigma = 2 × the angular step (``ml_optimiser.cpp``,
   ``MlOptimiser::initialiseGeneral``); ``--sigma_ang`` is overwritten there, so it is not given;
5. each final ``run_data.star`` against the truth (geodesic angle, RELION's Euler matrices) and each final
   ``run_model.star``'s resolution (``rlnCurrentResolution`` and where the gold-standard FSC falls below 0.143).

Writes ``results.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import priors_accuracy as pa  # noqa: E402
from relion_project_runs import run_measured, simulate_project, tail  # noqa: E402

SCRATCH_STAR = "Input/scratch.star"
PRIORS_STAR = "Input/priors.star"
MODES = ("global", "local")


def relion_diameter_A(box: int, pixel_size_A: float) -> float:
    """RELION's mask diameter: a margin around the 240 Å ribosome, inside the box."""
    return min(1.2 * pa.RIBOSOME_DIAMETER_A, 0.95 * box * pixel_size_A)


def write_inputs(project: Path) -> int:
    """scratch.star and priors.star: the same particles (those with a prior), as extracted and as the job wrote
    them. Returns their number."""
    from relion_canon.io.star import read_star, write_star

    job = read_star(project / pa.JOB_DIR / "particles.star")
    with_prior = job.particles["rlnAngleTiltPrior"].to_numpy(np.float64) < pa.NO_PRIOR - 1
    write_star(job.subset(with_prior), project / PRIORS_STAR)
    names = set(job.particles["rlnImageName"][with_prior])
    scratch = read_star(project / pa.PARTICLES)
    write_star(scratch.subset(scratch.particles["rlnImageName"].isin(names).to_numpy()), project / SCRATCH_STAR)
    return int(with_prior.sum())


def refine_command(mode: str, out: str, box: int, pixel_size_A: float, args: argparse.Namespace) -> list[str]:
    star, healpix = (SCRATCH_STAR, 2) if mode == "global" else (PRIORS_STAR, args.local_healpix)
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi",
            "--i", star, "--o", out, "--ref", pa.REFERENCE_BOXED, "--ini_high", str(args.lowpass), "--firstiter_cc",
            "--auto_refine", "--split_random_halves", "--healpix_order", str(healpix),
            "--auto_local_healpix_order", str(args.local_healpix), "--offset_range", "5", "--offset_step", "2",
            "--sym", "C1", "--low_resol_join_halves", "40", "--ctf", "--flatten_solvent", "--zero_mask", "--norm",
            "--scale", "--oversampling", "1", "--pad", "2", "--particle_diameter",
            str(round(relion_diameter_A(box, pixel_size_A))), "--j", str(args.relion_threads), "--random_seed", "0"]


def final_resolution(model_star: Path) -> dict:
    """rlnCurrentResolution of the final model and where its gold-standard FSC falls below 0.143 (Å)."""
    import starfile

    blocks = starfile.read(model_star, always_dict=True)
    general = blocks["model_general"]
    current = float(general["rlnCurrentResolution"])
    fsc = blocks.get("model_class_1")
    crossing = None
    if fsc is not None and "rlnGoldStandardFsc" in fsc.columns:
        res, value = fsc["rlnResolution"].to_numpy(float), fsc["rlnGoldStandardFsc"].to_numpy(float)
        below = np.flatnonzero((value < 0.143) & (res > 0))
        crossing = float(1.0 / res[below[0] - 1]) if len(below) and below[0] > 0 else None
    return {"current_resolution_A": current, "fsc_0143_A": crossing}


def progress(project: Path, out: str) -> dict:
    """How far an unfinished auto-refine got: its last iteration and that iteration's resolution."""
    its = sorted(project.glob(f"{out}_it*_half1_model.star"))
    if not its:
        return {"iterations": 0, "current_resolution_A": None}
    return {"iterations": int(its[-1].name.split("_it")[-1][:3]),
            "current_resolution_A": final_resolution(its[-1])["current_resolution_A"]}


def score_refinement(project: Path, out: str, truth) -> dict:
    data = project / f"{out}_data.star"
    model = project / f"{out}_model.star"
    if not data.exists():  # an auto-refine that did not converge leaves its iterations only
        its = sorted(project.glob(f"{out}_it*_half1_model.star"))
        raise RuntimeError(f"{out}: no final run_data.star (last iteration: {its[-1].name if its else 'none'})")
    table, true = pa.joined(data, truth)
    good = true["rlnCanonIsJunk"].to_numpy().astype(int) == 0
    error = pa.geodesic_deg(pa.angles(table[good], pa.ANGLE_COLUMNS), pa.angles(true[good], pa.ANGLE_COLUMNS))
    iterations = sorted(project.glob(f"{out}_it*_half1_model.star"))
    return {"error": pa.summary(error), **final_resolution(model), "iterations": len(iterations),
            "n_particles": int(len(table)), "n_good": int(good.sum())}


def run_setting(work: Path, views: str, args: argparse.Namespace) -> dict:
    from relion_canon.simulate import read_ground_truth

    if args.reuse:
        # A project priors_accuracy.py kept (--keep) with the same set options: its set, references and job.
        project = Path(args.reuse).resolve()
        job = json.loads((project / "logs" / "job.json").read_text())
        shutil.rmtree(project / "Refine3D", ignore_errors=True)
    else:
        project = work / f"refine_{views}_{args.n}_{args.box}"
        if project.exists():
            shutil.rmtree(project)
        simulate_project(project, pa.simulation_config(views, args))
        pa.write_references(project, args.lowpass, args.box, args.pixel_size)
        job = pa.run_job(project, args.threads, args.timeout)
    truth = read_ground_truth(project / "Input")
    table, joined_truth = pa.joined(project / pa.JOB_DIR / "particles.star", truth)
    priors = pa.score_priors(table, joined_truth)
    n_refined = write_inputs(project)
    row = {"views": views, "n": args.n, "box": args.box, "pixel_size_A": args.pixel_size, "snr": args.snr,
           "junk": args.junk, "lowpass_A": args.lowpass, "job": job, "priors": priors, "n_refined": n_refined,
           "refinements": {}}
    for mode in args.modes.split(","):
        out_dir = project / "Refine3D" / mode
        out_dir.mkdir(parents=True)
        out = f"Refine3D/{mode}/run"
        cmd = refine_command(mode, out, args.box, args.pixel_size, args)
        t0 = time.perf_counter()
        try:
            measured = run_measured(["nice", "-n", str(args.nice), *cmd], project, out_dir / "run.out",
                                    out_dir / "run.err", args.timeout)
        except TimeoutError:
            # Stopped (its process tree killed) at --timeout: how far it got is the figure, a lower bound on its time.
            row["refinements"][mode] = {"command": " ".join(cmd), "timed_out": True,
                                        "wall_s": time.perf_counter() - t0, **progress(project, out)}
            continue
        measured["command"] = " ".join(cmd)
        if measured["returncode"] != 0:
            measured["failed"] = tail(out_dir / "run.err") or tail(out_dir / "run.out")
            row["refinements"][mode] = measured
            continue
        row["refinements"][mode] = {**measured, **score_refinement(project, out, truth)}
        print(f"{mode}: {measured['wall_s']:.0f} s, {row['refinements'][mode]['current_resolution_A']:.1f} Å, "
              f"median error {row['refinements'][mode]['error']['median_deg']:.1f}°", flush=True)
    refs = row["refinements"]
    if all("wall_s" in refs.get(m, {}) and "error" in refs.get(m, {}) for m in MODES):
        row["local_over_global_wall"] = refs["local"]["wall_s"] / refs["global"]["wall_s"]
        row["local_over_global_wall_with_job"] = (refs["local"]["wall_s"] + job["wall_s"]) / refs["global"]["wall_s"]
    return row


def _fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def table_text(rows: list[dict]) -> str:
    lines = ["| views | n refined | run | wall s | CPU s | iterations | resolution Å (rlnCurrentResolution) "
             "| FSC 0.143 Å | median error ° | p90 ° | < 5° |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["priors"]["error"]
        lines.append(f"| {r['views']} | {r['n_refined']} | the job's priors | {r['job']['wall_s']:.0f} "
                     f"| {r['job']['cpu_s']:.0f} | — | — | — | {_fmt(p['median_deg'])} | {_fmt(p['p90_deg'])} "
                     f"| {_fmt(100 * (p['under_5deg'] or 0))} % |")
        for mode, m in r["refinements"].items():
            if m.get("timed_out"):
                lines.append(f"| {r['views']} | {r['n_refined']} | {mode} | > {m['wall_s']:.0f} (stopped) | "
                             f"| {m['iterations']} | {_fmt(m['current_resolution_A'])} (unfinished) | | | | |")
                continue
            if "error" not in m:
                lines.append(f"| {r['views']} | {r['n_refined']} | {mode} | failed | | | | | | | |")
                continue
            e = m["error"]
            lines.append(f"| {r['views']} | {r['n_refined']} | {mode} | {m['wall_s']:.0f} | {m['cpu_s']:.0f} "
                         f"| {m['iterations']} | {_fmt(m['current_resolution_A'])} | {_fmt(m['fsc_0143_A'])} "
                         f"| {_fmt(e['median_deg'])} | {_fmt(e['p90_deg'])} | {_fmt(100 * e['under_5deg'])} % |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", default="8", help="comma-separated: a number of views or 'uniform'")
    pa.add_set_options(parser)
    parser.add_argument("--modes", default="global,local", help="which refinements: global, local or both")
    parser.add_argument("--local-healpix", type=int, default=4, help="the local run's first healpix order")
    parser.add_argument("--relion-threads", type=int, default=1, help="--j of each of the two working MPI ranks")
    parser.add_argument("--nice", type=int, default=5)
    parser.add_argument("--reuse", default=None, help="a project priors_accuracy.py kept (--keep): refine its "
                        "particles and priors instead of simulating and running the job again (one --views)")
    parser.add_argument("--smoke", action="store_true", help="CI size: 200 particles, 32 px at 8 Å, one view, SNR 0.5")
    parser.add_argument("--out", default=str(HERE / "results" / "refine"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.box, args.pixel_size, args.views, args.snr = 200, 32, 8.0, "1", 0.5
    return args


def machine_info() -> dict:
    version = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout.strip()
    return {"platform": platform.platform(), "python": platform.python_version(),
            "relion": version.splitlines()[0] if version else "unknown"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="priors_refine_", dir=args.workdir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    try:
        for views in [v.strip() for v in args.views.split(",") if v.strip()]:
            rows.append(run_setting(work, views, args))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = table_text(rows)
    print(text)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": machine_info(), "rows": rows,
                                                  "total_s": time.perf_counter() - t0}, indent=1, default=str))


if __name__ == "__main__":
    main()
