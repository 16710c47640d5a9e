"""The whole job at 20k, 200k and 1M particles: particles/s end to end, stage times, peak RSS (and the GPU's
peak allocation when it runs on one), and the ratio to a plain sequential read of the same stacks in the same
run (the I/O limit). See README.md.

    python benchmarks/scale/run.py                                  # 20k, 200k, 1M on the CPU
    python benchmarks/scale/run.py --sizes 20000,200000 --device cuda
    python benchmarks/scale/run.py --sizes 20000 --processes 1,2    # one process, then two under torchrun
    python benchmarks/scale/run.py --smoke                          # what tests/test_benchmarks_scale.py runs
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "classify"))
from relion_project_runs import run_measured, tail  # noqa: E402
from score_job import score_job  # noqa: E402

SHARED_MAP = HERE.parents[2] / "shared" / "data" / "maps" / "clean70SRibosome_vol_65p.mrc"
READ_BLOCK = 64 * 2**20  # bytes per read in the I/O limit: large enough that syscalls cost nothing


# --- data -----------------------------------------------------------------------------------------------------
def simulate_chunk(work: Path, i: int, args: argparse.Namespace) -> Path:
    """Chunk ``i``: ``args.chunk`` particles simulated with seed ``args.seed + i``, its image names relative to
    ``work`` (the project directory the job runs in). The clean images are deleted: only the truth's table is
    scored."""
    out = work / "chunks" / f"c{i:04d}"
    if (out / "ground_truth.star").is_file() and _simulated_as(out, i, args):
        return out
    shutil.rmtree(out, ignore_errors=True)  # none, a partial one, or one simulated with other settings
    cmd = [relion_canon(), "simulate", "--o", str(out.relative_to(work)), "--n", str(args.chunk),
           "--box", str(args.box), "--pixel-size", str(args.pixel_size), "--views", args.views,
           "--snr", str(args.snr), "--shift-sigma", str(args.shift_sigma), "--junk-fraction", str(args.junk),
           "--seed", str(args.seed + i), "--quiet"]
    if args.source:
        cmd += ["--source", str(args.source), "--map-pixel-size", str(args.map_pixel_size)]
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
    (out / "ground_truth_clean.mrcs").unlink(missing_ok=True)
    return out


def _simulated_as(chunk: Path, i: int, args: argparse.Namespace) -> bool:
    """Whether the chunk in ``chunk`` was simulated with the settings asked for now (a work folder kept from a
    run with other settings must not be reused)."""
    try:
        config = json.loads((chunk / "simulation.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    wanted = {"n_particles": args.chunk, "box": args.box, "pixel_size": args.pixel_size, "views": args.views,
              "snr": args.snr, "shift_sigma": args.shift_sigma, "junk_fraction": args.junk, "seed": args.seed + i}
    return all(str(config.get(key)) == str(value) for key, value in wanted.items())


def concatenate_stars(paths: list[Path], out: Path, n: int, chunk_names: list[str]) -> None:
    """The first ``n`` particle rows of the STAR files ``paths`` (same optics, same columns) as one file, each
    micrograph name prefixed with its chunk's, so that micrographs of different chunks stay apart. Line by line:
    the memory stays flat however many rows."""
    tmp = out.with_suffix(".tmp")
    written = 0
    with open(tmp, "w") as dst:
        for k, path in enumerate(paths):
            block, labels, header = None, [], []
            with open(path) as src:
                for line in src:
                    stripped = line.strip()
                    if stripped.startswith("data_"):
                        block, labels = stripped, []
                    if block != "data_particles" or not stripped or stripped.startswith(("#", "data_", "loop_")):
                        header.append(line)
                        continue
                    if stripped.startswith("_"):
                        labels.append(stripped.split()[0])
                        header.append(line)
                        continue
                    if header:
                        if k == 0:
                            dst.writelines(header)
                        header = []
                        mic = labels.index("_rlnMicrographName") if "_rlnMicrographName" in labels else None
                    if written == n:
                        break
                    if mic is not None:
                        fields = stripped.split()
                        fields[mic] = f"{chunk_names[k]}/{fields[mic]}"
                        line = "\t".join(fields) + "\n"
                    dst.write(line)
                    written += 1
            if written == n:
                break
    if written != n:
        tmp.unlink()
        raise RuntimeError(f"{out}: the chunks hold {written} particles, {n} asked for")
    tmp.replace(out)


def particle_set(work: Path, n: int, args: argparse.Namespace) -> Path:
    """A set of ``n`` particles made of ``ceil(n / chunk)`` chunks, written once: ``set_N/particles.star`` and
    its ``ground_truth.star``."""
    chunks = [simulate_chunk(work, i, args) for i in range(math.ceil(n / args.chunk))]
    folder = work / f"set_{n}"
    folder.mkdir(exist_ok=True)
    names = [c.name for c in chunks]
    for name in ("particles.star", "ground_truth.star"):  # joined anew each time: seconds, even at 1M
        concatenate_stars([c / name for c in chunks], folder / name, n, names)
    return folder


def sequential_read_seconds(work: Path, n: int, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds to read the ``n`` particles' stacks once, front to back, into one reused buffer (no parsing, no
    copy kept), and the bytes read: what the job could do at best with these files in this page-cache state."""
    image_bytes = args.box * args.box * 4
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    left = n * image_bytes
    total = 0
    t0 = time.perf_counter()
    for i in range(math.ceil(n / args.chunk)):
        path = work / "chunks" / f"c{i:04d}" / "particles.mrcs"
        with open(path, "rb", buffering=0) as fh:
            fh.seek(os.path.getsize(path) - args.chunk * image_bytes)  # past the header and extended header
            want = min(left, args.chunk * image_bytes)
            while want > 0:
                got = fh.readinto(view[: min(READ_BLOCK, want)])
                if not got:
                    break
                want -= got
                left -= got
                total += got
    return time.perf_counter() - t0, total


# --- the job --------------------------------------------------------------------------------------------------
def relion_canon() -> str:
    script = Path(sys.executable).parent / "relion-canon"
    return str(script) if script.exists() else shutil.which("relion-canon") or "relion-canon"


def job_command(particles: str, out: str, processes: int, args: argparse.Namespace) -> list[str]:
    """``relion-canon run`` on ``particles``; with several ``processes``, started by torchrun (sharing every
    pass), each with ``--threads`` threads."""
    options = ["run", "--i", particles, "--o", out, "--device", args.device, "--quiet", *args.job_args.split()]
    if args.threads:
        options += ["--j", str(args.threads)]
    if processes == 1:
        return [relion_canon(), *options]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "relion_canon.cli.main", *options]


def job_name(n: int, processes: int) -> str:
    return f"job_{n}" if processes == 1 else f"job_{n}_p{processes}"


def run_job(work: Path, folder: Path, n: int, args: argparse.Namespace, processes: int = 1) -> dict:
    name = job_name(n, processes)
    job = work / name
    shutil.rmtree(job, ignore_errors=True)
    cmd = job_command(str((folder / "particles.star").relative_to(work)), job.name, processes, args)
    measured = run_measured(cmd, work, work / f"{name}.out", work / f"{name}.err", args.timeout)
    if measured["returncode"] != 0:
        raise RuntimeError(f"the job on {n} particles failed ({measured['returncode']}):\n"
                           f"{tail(work / f'{name}.err')}")
    report = json.loads((job / "report.json").read_text())
    classification = report.get("classification", {})
    return {**measured, "processes": processes, "stage_seconds": {k: round(v, 2) for k, v in report["seconds"].items()},
            "resources": report.get("resources", {}), "classes": classification.get("n_classes"),
            "rounds": len(classification.get("history", [])), "converged": classification.get("converged"),
            "scores": {k: v for k, v in score_job(job, folder).items() if k != "per_class"}}


def measure(work: Path, n: int, args: argparse.Namespace, processes: int = 1) -> dict:
    folder = particle_set(work, n, args)
    # The read first, then the job at once: both find the page cache as the simulation (or the last size) left it.
    read_s, read_bytes = sequential_read_seconds(work, n, args)
    load = os.getloadavg()[0]
    job = run_job(work, folder, n, args, processes)
    if not args.keep:
        shutil.rmtree(work / job_name(n, processes), ignore_errors=True)
    return {"n": n, "read_seconds": read_s, "read_mb_per_s": read_bytes / 2**20 / read_s,
            "particles_per_s": n / job["wall_s"], "io_ratio": read_s / job["wall_s"],
            "loadavg_1min_at_start": load, **job}


# --- reporting ------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


STAGES = ("train", "predict", "refine", "defocus_fit", "figures")
NAMED = (*STAGES, "outliers", "orientation")  # the report's stages; what they leave of its total is "other"


def stage_columns(r: dict) -> dict[str, float]:
    """The stages' seconds, "other" (the job's total less its named stages: reading the STAR, writing the
    results) and "start" (the wall time less the job's total: start-up and imports)."""
    seconds = r["stage_seconds"]
    columns = {s: seconds.get(s, 0.0) for s in STAGES}
    columns["other"] = seconds["total"] - sum(seconds.get(s, 0.0) for s in NAMED)
    columns["start"] = r["wall_s"] - seconds["total"]
    return columns


def table(rows: list[dict], meta: dict) -> str:
    head = (f"{'particles':>10} {'procs':>5} {'wall s':>8} {'part/s':>8} {'read s':>7} {'I/O ratio':>9} {'peak RSS GB':>11} "
            f"{'RSS x prev':>10} {'GPU GB':>7} " + " ".join(f"{s:>11}" for s in (*STAGES, "other", "start"))
            + f" {'classes':>7} {'rounds':>6} {'junk AUC':>8}")
    lines = [f"The whole job ({meta['job']}) on {meta['device_name']}, {meta['threads']} threads per process", head]
    previous: dict[int, float] = {}  # the last size's peak RSS, per number of processes
    for r in rows:
        gpu = r["resources"].get("gpu_peak_allocated_mb")
        procs = r.get("processes", 1)
        ratio = f"{r['peak_rss_mb'] / previous[procs]:.2f}" if procs in previous else "-"
        previous[procs] = r["peak_rss_mb"]
        stages = " ".join(f"{v:11.1f}" for v in stage_columns(r).values())
        lines.append(f"{r['n']:>10,} {procs:>5} {r['wall_s']:8.1f} {r['particles_per_s']:8.0f} {r['read_seconds']:7.2f} "
                     f"{r['io_ratio']:9.4f} {r['peak_rss_mb'] / 1024:11.2f} {ratio:>10} "
                     f"{'-' if gpu is None else f'{gpu / 1024:.2f}':>7} {stages} {r['classes'] or '-':>7} "
                     f"{r['rounds']:>6} {r['scores']['junk_auc']:8.3f}")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for procs in sorted({r.get("processes", 1) for r in rows}):
        mine = [r for r in rows if r.get("processes", 1) == procs]
        label = "the job, end to end" + ("" if procs == 1 else f", {procs} processes")
        ax1.plot([r["n"] for r in mine], [r["particles_per_s"] for r in mine], "o-", label=label)
        ax2.plot([r["n"] for r in mine], [r["peak_rss_mb"] / 1024 for r in mine], "o-", label=label)
    n = sorted({r["n"] for r in rows})
    read = {r["n"]: r["n"] / r["read_seconds"] for r in rows}
    ax1.plot(n, [read[k] for k in n], "s--", label="sequential read of the stacks")
    ax1.set(xscale="log", yscale="log", xlabel="particles", ylabel="particles / s", title="Throughput")
    ax1.legend(fontsize=8)
    ax2.set(xscale="log", xlabel="particles", ylabel="GB", title="Peak RSS of the job")
    ax2.set_ylim(bottom=0)
    fig.suptitle(f"{meta['device_name']}, {meta['threads']} threads per process", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20000,200000,1000000", help="comma-separated particle counts")
    p.add_argument("--chunk", type=int, default=20000, help="particles per simulated stack")
    p.add_argument("--views", default="uniform", help="'uniform', or K: each chunk then draws its own K views")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--pixel-size", type=float, default=4.0)
    p.add_argument("--source", default=str(SHARED_MAP) if SHARED_MAP.is_file() else None,
                   help="map to project (default: the 70S map of ../shared, else the built-in phantom)")
    p.add_argument("--map-pixel-size", type=float, default=5.0)
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--shift-sigma", type=float, default=6.0)
    p.add_argument("--junk", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="the job's --device (cpu, cuda, auto)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads per process (the job's --j)")
    p.add_argument("--processes", default="1",
                   help="comma-separated process counts to run the job with at each size (several: under torchrun)")
    p.add_argument("--job-args", default="", help="more options for relion-canon run, as one string")
    p.add_argument("--timeout", type=float, default=6 * 3600)
    p.add_argument("--workdir", default=None, help="where the data go (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data and the jobs' folders")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--smoke", action="store_true", help="300 particles at 32 px in two chunks")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.chunk, args.box, args.pixel_size = "300", 150, 32, 8.0
        args.job_args = args.job_args or "--epochs 1 --train-particles 100"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="relion_canon_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    need = max(sizes) * args.box * args.box * 4 * 1.1
    free = shutil.disk_usage(work).free
    if need > 0.9 * free:
        print(f"error: {max(sizes):,} particles need {need / 2**30:.1f} GB in {work}, {free / 2**30:.1f} GB free",
              file=sys.stderr)
        return 2
    meta = {"device": args.device, "device_name": device_name(args.device), "threads": args.threads,
            "job": " ".join(["relion-canon run", "--device", args.device, *args.job_args.split()]),
            "views": args.views, "box": args.box, "pixel_size": args.pixel_size, "snr": args.snr,
            "junk": args.junk, "chunk": args.chunk, "source": args.source, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    rows = []
    counts = [int(p) for p in args.processes.split(",")]
    try:
        for n, processes in ((n, p) for n in sizes for p in counts):
            rows.append(measure(work, n, args, processes))
            r = rows[-1]
            print(f"{n:,} particles, {processes} process(es): {r['wall_s']:.1f} s ({r['particles_per_s']:.0f}/s), "
                  f"read {r['read_seconds']:.2f} s, peak RSS {r['peak_rss_mb'] / 1024:.2f} GB", flush=True)
            (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    finally:
        if not args.keep:
            for made in [work / "chunks", *work.glob("set_*"), *work.glob("job_*")]:
                shutil.rmtree(made, ignore_errors=True) if made.is_dir() else made.unlink()
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    text = table(rows, meta)
    print(text)
    (out / "table.txt").write_text(text + "\n")
    figure(rows, out / "scale.png", meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
