"""relion_canon's whole External job against RELION 3.1.3 Class2D (K = 1) on the same simulated particles.

    python benchmarks/vs_relion/run.py                       # the full grid (8 settings; hours on 2 cores)
    python benchmarks/vs_relion/run.py --n 2000 --snr 0.1 --junk 0.1      # one setting
    python benchmarks/vs_relion/run.py --n 300 --box 32 --relion-iter 2 --epochs 1   # smoke size (CI)

For every setting of the grid (--n × --snr × --junk; defaults 2,000 and 20,000 particles, SNR 0.1 and 0.05,
no junk and 10 % junk) it simulates the realistic dataset (64 px, 2.5 Å/px, one view, uniform psi, defocus
0.5–2.5 µm) into a scratch RELION project, then runs, one after the other on the same machine:

* RELION: ``relion_refine --i Input/particles.star --o Class2D/run --K 1 --iter 20 --psi_step 6
  --offset_range 5 --offset_step 2 --ctf --norm --scale --flatten_solvent --zero_mask --particle_diameter D
  --j 2 --random_seed 0`` (D = 0.75 × box × pixel size; the seed only makes runs repeatable);
* relion_canon: ``relion_canon_external --o External/job001/ --in_parts Input/particles.star --j 2`` with its
  default parameters (``--epochs`` only when given here).

It reports per setting, over the true (non-junk) particles: psi rMSE and median error against the truth for
both (one global offset and sign each, ``relion_canon.analysis.metrics.align_angles``), the same for the
network the job trained applied alone (``relion-canon predict``'s function with the job's ``model.pt``,
untimed: what the refinement adds), the agreement between the two (the same metric, RELION's psi as the
reference), junk ROC AUC (ours:
``rlnParticleSelectZScore``; RELION's Class2D writes no Z-score, so its own per-particle numbers stand in:
low ``rlnMaxValueProbDistribution`` and low ``rlnLogLikeliContribution`` taken as junk, both reported),
our defocus rMSE, wall time of both and RELION/ours, and the peak RSS of each process tree (psutil samples
and the kernel's VmHWM). Writes
``results.json``, ``table.txt`` and ``error_vs_time.png`` into --out.
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
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the helpers shared by the benchmarks
from relion_project_runs import (  # noqa: E402
    add_run_options,
    auc_or_none,
    cwd,
    external_command,
    relion_class2d_command,
    run_measured,
    simulate_project,
    tail,
)
JOB_DIR = "External/job001/"
RELION_OUT = "Class2D/run"
# The job's own network applied alone (no refinement), to show what the refinement adds.
NETWORK_STAR = "Network/particles.star"


def _floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def simulate(project: Path, n: int, box: int, pixel_size: float, snr: float, junk: float, seed: int) -> None:
    from relion_canon.simulate import SimulationConfig

    config = SimulationConfig(n_particles=n, box=box, pixel_size=pixel_size, snr=snr, junk_fraction=junk,
                              seed=seed, defocus_range=(5000.0, 25000.0), views=1, psi_sigma=None)
    simulate_project(project, config)


def relion_command(box: int, pixel_size: float, iterations: int, threads: int) -> list[str]:
    return relion_class2d_command("Input/particles.star", RELION_OUT, 1, iterations, 0.75 * box * pixel_size, threads)


def network_alone(project: Path, threads: int) -> None:
    """Apply the network the job trained, alone, to every particle (untimed: it only scores a step)."""
    from relion_canon.context import QUIET
    from relion_canon.threads import cpu_threads
    from relion_canon.predict_star import predict_file

    with cwd(project), cpu_threads(threads):
        predict_file(Path("Input/particles.star"), Path(JOB_DIR) / "model.pt", Path(NETWORK_STAR), context=QUIET)


def evaluate(project: Path, iterations: int) -> dict:
    """Every accuracy figure of one setting, from the two output STAR files and the ground truth."""
    from relion_canon.analysis.metrics import align_angles
    from relion_canon.io.star import read_star
    from relion_canon.simulate import read_ground_truth

    truth = read_ground_truth(project / "Input").set_index("rlnImageName")
    ours = read_star(project / JOB_DIR / "particles.star").particles.set_index("rlnImageName")
    relion = read_star(project / f"{RELION_OUT}_it{iterations:03d}_data.star").particles.set_index("rlnImageName")
    network = read_star(project / NETWORK_STAR).particles.set_index("rlnImageName")
    names = truth.index
    # RELION may reorder; join on the image name.
    ours, relion, network = ours.loc[names], relion.loc[names], network.loc[names]
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(int)
    good = junk == 0
    true_psi = truth["rlnAnglePsi"].to_numpy(float)[good]
    our_psi = ours["rlnAnglePsi"].to_numpy(float)[good]
    relion_psi = relion["rlnAnglePsi"].to_numpy(float)[good]
    a_ours, a_relion = align_angles(our_psi, true_psi), align_angles(relion_psi, true_psi)
    agree = align_angles(our_psi, relion_psi)
    a_network = align_angles(network["rlnAnglePsi"].to_numpy(float)[good], true_psi)
    result = {
        "n_true_particles": int(good.sum()),
        "network_psi_rmse": a_network.rmse, "network_psi_median": a_network.median,
        "ours_psi_rmse": a_ours.rmse, "ours_psi_median": a_ours.median,
        "ours_psi_sign": a_ours.sign, "ours_psi_offset": a_ours.offset,
        "relion_psi_rmse": a_relion.rmse, "relion_psi_median": a_relion.median,
        "relion_psi_sign": a_relion.sign, "relion_psi_offset": a_relion.offset,
        "agreement_psi_rmse": agree.rmse, "agreement_psi_median": agree.median,
        # The share of particles on which the two agree within 5°.
        "agreement_within_5deg": float(np.mean(np.abs(agree.errors) < 5.0)),
        "ours_auc": None, "relion_auc_maxvalueprob": None, "relion_auc_loglikeli": None,
    }
    if junk.any():
        result["ours_auc"] = auc_or_none(junk, ours["rlnParticleSelectZScore"].to_numpy(float))
        result["relion_auc_maxvalueprob"] = auc_or_none(junk, -relion["rlnMaxValueProbDistribution"].to_numpy(float))
        result["relion_auc_loglikeli"] = auc_or_none(junk, -relion["rlnLogLikeliContribution"].to_numpy(float))
    if "rlnCanonDefocus" in ours.columns:
        true_def = 0.5 * (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy(float)[good]
        est = ours["rlnCanonDefocus"].to_numpy(float)[good]
        result["ours_defocus_rmse_um"] = float(np.sqrt(np.mean((est - true_def) ** 2)) / 1e4)
    return result


def run_setting(work: Path, n: int, snr: float, junk: float, args: argparse.Namespace) -> dict:
    tag = f"n{n}_snr{snr:g}_junk{junk:g}"
    project = work / tag
    print(f"[{tag}] simulating {n} particles ({args.box} px, {args.pixel_size} Å/px, SNR {snr:g}, {junk:.0%} junk)",
          flush=True)
    t0 = time.perf_counter()
    simulate(project, n, args.box, args.pixel_size, snr, junk, args.seed)
    row: dict = {"setting": tag, "n": n, "snr": snr, "junk": junk, "simulate_s": time.perf_counter() - t0}

    cmd = relion_command(args.box, args.pixel_size, args.relion_iter, args.threads)
    print(f"[{tag}] RELION: {' '.join(cmd)}", flush=True)
    (project / "Class2D").mkdir()
    r = run_measured(cmd, project, project / "Class2D/run.out", project / "Class2D/run.err", args.timeout)
    if r["returncode"] != 0:
        raise RuntimeError(f"[{tag}] relion_refine failed ({r['returncode']}):\n{tail(project / 'Class2D/run.err')}")
    row.update({"relion_wall_s": r["wall_s"], "relion_cpu_s": r["cpu_s"], "relion_load_average": r["load_average_mean"],
                "relion_peak_rss_mb": r["peak_rss_mb"], "relion_command": " ".join(cmd),
                "relion_rss_detail_mb": {k: r[k] for k in ("peak_rss_sampled_tree_mb", "peak_rss_hwm_mb")}})

    cmd = [*external_command(), "--o", JOB_DIR, "--in_parts", "Input/particles.star", "--j", str(args.threads)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print(f"[{tag}] relion_canon: {' '.join(cmd)}", flush=True)
    job = project / JOB_DIR
    r = run_measured(cmd, project, job / "run.out", job / "run.err", args.timeout)
    if not (job / "RELION_JOB_EXIT_SUCCESS").exists():
        raise RuntimeError(f"[{tag}] relion_canon_external did not succeed ({r['returncode']}):\n{tail(job / 'run.err')}")
    row.update({"ours_wall_s": r["wall_s"], "ours_cpu_s": r["cpu_s"], "ours_load_average": r["load_average_mean"],
                "ours_peak_rss_mb": r["peak_rss_mb"], "ours_command": " ".join(cmd),
                "ours_rss_detail_mb": {k: r[k] for k in ("peak_rss_sampled_tree_mb", "peak_rss_hwm_mb")}})
    report = json.loads((job / "report.json").read_text())
    network_alone(project, args.threads)
    row["ours_epochs"] = len(report.get("training_history") or [])
    row["ours_seconds"] = report.get("seconds")

    row.update(evaluate(project, args.relion_iter))
    row["time_ratio_relion_over_ours"] = row["relion_wall_s"] / row["ours_wall_s"]
    row["cpu_ratio_relion_over_ours"] = row["relion_cpu_s"] / max(row["ours_cpu_s"], 1e-9)
    print(f"[{tag}] psi rMSE ours {row['ours_psi_rmse']:.2f}°, RELION {row['relion_psi_rmse']:.2f}°; "
          f"wall ours {row['ours_wall_s']:.0f} s, RELION {row['relion_wall_s']:.0f} s", flush=True)
    return row


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'setting':<24} {'psi rMSE ours':>13} {'RELION':>7} {'net alone':>9} {'median ours':>11} {'RELION':>7} "
            f"{'agree rMSE':>10} {'agree med':>9} {'AUC ours':>8} {'RELION mp':>9} {'RELION ll':>9} "
            f"{'def rMSE µm':>11} {'wall ours s':>11} {'RELION s':>9} {'RELION/ours':>11} "
            f"{'CPU ratio':>9} {'load':>5} {'RSS ours MB':>11} {'RELION MB':>9}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['setting']:<24} {_fmt(r['ours_psi_rmse'], '13.2f')} {_fmt(r['relion_psi_rmse'], '7.2f')} "
            f"{_fmt(r.get('network_psi_rmse'), '9.2f')} "
            f"{_fmt(r['ours_psi_median'], '11.2f')} {_fmt(r['relion_psi_median'], '7.2f')} "
            f"{_fmt(r['agreement_psi_rmse'], '10.2f')} {_fmt(r['agreement_psi_median'], '9.2f')} "
            f"{_fmt(r['ours_auc'], '8.3f')} {_fmt(r['relion_auc_maxvalueprob'], '9.3f')} "
            f"{_fmt(r['relion_auc_loglikeli'], '9.3f')} {_fmt(r.get('ours_defocus_rmse_um'), '11.3f')} "
            f"{_fmt(r['ours_wall_s'], '11.1f')} {_fmt(r['relion_wall_s'], '9.1f')} "
            f"{_fmt(r['time_ratio_relion_over_ours'], '11.2f')} {_fmt(r.get('cpu_ratio_relion_over_ours'), '9.2f')} "
            f"{_fmt(r.get('relion_load_average'), '5.1f')} {_fmt(r['ours_peak_rss_mb'], '11.0f')} "
            f"{_fmt(r['relion_peak_rss_mb'], '9.0f')}")
    lines.append("psi errors in degrees over the true particles, after one global offset and sign each; "
                 "'agree' = ours vs RELION; 'net alone' = the network the job trained, applied without the refinement. AUC: ours = rlnParticleSelectZScore; RELION mp / ll = low "
                 "rlnMaxValueProbDistribution / rlnLogLikeliContribution taken as junk. CPU ratio = RELION's CPU seconds "
                 "over ours (user + system, whole process tree); load = the machine's mean 1-minute load average "
                 "while RELION ran (2 would be RELION alone on 2 cores).")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.plot([r["ours_wall_s"], r["relion_wall_s"]], [r["ours_psi_rmse"], r["relion_psi_rmse"]],
                color="0.8", lw=1, zorder=1)
    ax.scatter([r["ours_wall_s"] for r in rows], [r["ours_psi_rmse"] for r in rows], label="relion_canon (External job)",
               color="tab:blue", zorder=2)
    ax.scatter([r["relion_wall_s"] for r in rows], [r["relion_psi_rmse"] for r in rows],
               label="RELION 3.1 Class2D, K=1", color="tab:red", marker="s", zorder=2)
    for r in rows:
        ax.annotate(r["setting"], (r["ours_wall_s"], r["ours_psi_rmse"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log scale)")
    ax.set_ylabel("psi rMSE vs truth (°)")
    ax.set_title("In-plane angle error vs wall time, same particles, same machine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2000,20000", help="particle counts, comma-separated")
    parser.add_argument("--snr", default="0.1,0.05", help="SNRs, comma-separated")
    parser.add_argument("--junk", default="0,0.1", help="junk fractions, comma-separated")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=2.5)
    parser.add_argument("--relion-iter", type=int, default=20)
    add_run_options(parser, HERE / "results")
    args = parser.parse_args()
    if shutil.which("relion_refine") is None:
        sys.exit("relion_refine not on PATH: install RELION 3.1 (apt-get install relion)")

    import torch

    grid = list(itertools.product(_ints(args.n), _floats(args.snr), _floats(args.junk)))
    work = Path(tempfile.mkdtemp(prefix="vs_relion_", dir=args.workdir))
    rows = []
    try:
        for n, snr, junk in grid:
            rows.append(run_setting(work, n, snr, junk, args))
    finally:
        if args.keep:
            print(f"Kept the scratch projects in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    relion_version = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout.strip()
    machine = {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__,
        "ours_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({args.threads} threads)",
        "relion": relion_version.splitlines()[0] if relion_version else "unknown",
    }
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "workdir", "keep")}
    (out / "results.json").write_text(json.dumps({"settings": settings, "machine": machine, "rows": rows}, indent=2,
                                                 default=str))
    (out / "table.txt").write_text(text + "\n")
    plot(rows, out / "error_vs_time.png")
    print(f"Wrote {out / 'results.json'}, {out / 'table.txt'} and {out / 'error_vs_time.png'}")


if __name__ == "__main__":
    main()
