"""Per-particle canonical images from the whole job (issue: paper A's product), against the clean truth.

    python benchmarks/papers/canonical_job.py                         # 1 view, 8 views, uniform; 2,000 each
    python benchmarks/papers/canonical_job.py --views 8 --n 400 --box 32

For each ``--views`` setting it simulates the 70S ribosome map (``../shared/data``; 5 Å/voxel, its header has none;
64 px at 4 Å, SNR 0.05, 10 % junk, shifts of ~1.5 px), runs the job once with ``--canonical-from network``
(``relion-canon run``, timed) and scores the good particles' canonical images with ``relion-canon evaluate``'s
metric (each image normalised inside the disc; one turn and mirror fitted per job class), three ways:

* **network**: each particle's own image, ``canonical.mrcs`` (paper A's decoder trained on the refined angles);
* **class average**: each particle's class average from the same run (``class_averages.mrcs``), which is what
  ``--write-canonical`` names by default;
* **no angle**: each true image's own rotational average, what knowing the content but not the angle scores.

Prints a table; writes ``results.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAP = REPO.parent / "shared" / "data" / "maps" / "clean70SRibosome_vol_65p.mrc"


def simulate(folder: Path, views: str, n: int, box: int, snr: float, seed: int) -> Path:
    """A simulated set of the 70S map (``relion-canon simulate``), ~1.5 px shifts at 64 px."""
    pixel = 4.0 * 64 / box
    subprocess.run(["relion-canon", "simulate", "--o", str(folder), "--n", str(n), "--box", str(box),
                    "--pixel-size", str(pixel), "--source", str(MAP), "--map-pixel-size", "5", "--views", views,
                    "--shift-sigma", str(1.5 * pixel), "--snr", str(snr), "--seed", str(seed), "--force"],
                   check=True, capture_output=True)
    return folder


def run_job(sim: Path, out: Path, threads: int) -> float:
    """The job with per-particle network canonical images; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(["relion-canon", "run", "--i", str(sim / "particles.star"), "--o", str(out), "--j", str(threads),
                    "--canonical-from", "network", "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - start


def class_average_star(job: Path) -> Path:
    """A copy of the job's particles.star whose canonical image is each particle's class average."""
    from relion_canon.io.imagename import format_image_name
    from relion_canon.io.star import read_star, write_star

    report = json.loads((job / "report.json").read_text())
    averages = report["class_averages"]
    position = {number: k for k, number in enumerate(averages["classes"])}
    star = read_star(job / "particles.star")
    numbers = star.particles["rlnClassNumber"].to_numpy()
    names = [format_image_name(position[int(c)], averages["file"]) for c in numbers]
    return write_star(star.with_columns({"rlnCanonCanonicalImage": names}), job / "particles_class_average.star")


def no_angle_mse(sim: Path) -> float:
    """Mean canonical MSE of each good particle's true image against its own rotational average."""
    sys.path.insert(0, str(HERE))
    from paper_scoring import rotation_blind_scores

    from relion_canon.io.source import ParticleSource
    from relion_canon.simulate import read_ground_truth

    truth = read_ground_truth(sim)
    good = np.flatnonzero(truth["rlnCanonIsJunk"].to_numpy() == 0)
    clean = ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(good)
    return rotation_blind_scores(clean, pixel_scale=False)["canonical_mse_mean"]


def score(views: str, work: Path, args: argparse.Namespace) -> dict:
    from relion_canon.analysis.evaluation import evaluate

    sim = simulate(work / f"sim_{views}", views, args.n, args.box, args.snr, args.seed)
    job = work / f"job_{views}"
    wall = run_job(sim, job, args.threads)
    report = json.loads((job / "report.json").read_text())
    network = evaluate(job, sim).canonical
    average = evaluate(class_average_star(job), sim).canonical
    return {
        "views": views, "n": args.n, "box": args.box, "snr": args.snr,
        "network_mse_mean": network.mean_mse, "network_mse_median": float(np.median(network.mse)),
        "class_average_mse_mean": average.mean_mse, "class_average_mse_median": float(np.median(average.mse)),
        "no_angle_mse_mean": no_angle_mse(sim), "frames": network.frames,
        "canonical_seconds": report["seconds"].get("canonical_images"), "job_seconds": wall,
        "canonical_training": report.get("canonical_images"),
    }


def table(rows: list[dict]) -> str:
    lines = ["| views | n | network MSE mean / median | class average MSE mean / median | no angle | classes | "
             "canonical stage (s) | job wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['views']} | {r['n']} | {r['network_mse_mean']:.3f} / {r['network_mse_median']:.3f} | "
                     f"{r['class_average_mse_mean']:.3f} / {r['class_average_mse_median']:.3f} | "
                     f"{r['no_angle_mse_mean']:.3f} | {r['frames']} | {r['canonical_seconds']:.0f} | "
                     f"{r['job_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", default="1,8,uniform", help="comma-separated --views settings")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the simulated sets and jobs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "canonical_job")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="canonical_job_", dir=args.workdir)).resolve()
    try:
        rows = [score(views, work, args) for views in args.views.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    (args.out / "table.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
