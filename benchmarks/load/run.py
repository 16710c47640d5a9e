#!/usr/bin/env python
"""Load benchmark: ``predict`` with a small trained model on 10k, 100k and 1M particles; peak RSS and throughput.

One command (see README.md next to this file)::

    python benchmarks/load/run.py [--sizes 10000,100000,1000000 --workdir DIR --out DIR --threads N]

It trains a small rotation-invariant auto-encoder on ``test_data/sim_tiny`` (32 px, 2.5 Å/px; or takes
``--model``), then for each size N writes one N-image stack (memory-mapped, chunk by chunk, the sim_tiny images
over and over) and a RELION 3.1 particle STAR file naming every image, and runs ``predict_file`` (what
``relion-canon predict`` runs) on it in a fresh process. Measured per size:

* peak RSS of that process (``VmHWM``: exact, over its whole life, interpreter and torch included), the RSS
  after the imports (what the particles add is the difference), and the peak seen by sampling the process
  tree from outside with psutil every 50 ms (a cross-check);
* wall time of ``predict_file`` (read STAR, load model, open stacks, inference, write STAR) and particles/s;
* the same for ``read_star`` alone in another fresh process, to tell the STAR parse from the rest.

The ratios that matter: peak RSS at each size over the smallest size's (target in
``../shared/docs/benchmarks.md``: 10x the particles, < 1.2x the RSS), and particles/s against the smallest size.
Free disk space is checked first: a size that does not fit is scaled down, saying so. Data are removed after
each size (``--keep`` keeps them). Prints a table; writes ``results.json``, ``table.txt`` and ``load.png`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIM_TINY = REPO / "test_data" / "sim_tiny"
BOX = 32  # sim_tiny's box: the model is trained on it
PIXEL_SIZE = 2.5
MIB = 1024 * 1024
STAR_BYTES_PER_ROW = 200  # a 12-column Extract-style row is ~170 bytes; the output STAR adds two columns
CHUNK = 65536  # images written per chunk: 256 MiB of float32 at 32 px


# --- process memory -------------------------------------------------------------------------------------------
def proc_status() -> dict[str, float]:
    """VmRSS / VmHWM of this process in MiB (Linux); empty elsewhere."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def peak_rss_mib() -> float:
    """Peak RSS of this process: VmHWM where there is one (it covers this process image alone), else ru_maxrss."""
    hwm = proc_status().get("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / MIB if sys.platform == "darwin" else kb / 1024.0


class TreeSampler(threading.Thread):
    """Highest summed RSS of a process and its children, sampled every ``interval`` s (psutil), until it exits."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mib = pid, interval, None

    def run(self) -> None:
        try:
            import psutil
        except ImportError:  # the bench extra is not installed: the child's own VmHWM still counts
            return
        try:
            proc = psutil.Process(self.pid)
            while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_mib = max(self.peak_mib or 0.0, rss / MIB)
                time.sleep(self.interval)
        except psutil.Error:
            pass


# --- children: what is measured -------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints one JSON line. read_star runs without torch imported."""
    from relion_canon.io.star import read_star

    threads = None
    if args.child == "predict":
        import torch

        from relion_canon.context import QUIET
        from relion_canon.predict_star import predict_file

        if args.threads:
            torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
    after_imports = proc_status().get("VmRSS", float("nan"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    if args.child == "read_star":
        n = len(read_star(args.star))
    else:
        predict_file(args.star, args.model, args.predict_out, device="cpu", batch_size=args.batch, context=QUIET)
        n = None
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "n": n, "rss_after_imports_mib": after_imports, "peak_rss_mib": peak_rss_mib(),
                      "threads": threads, "loadavg_1min_at_start": load}))


def run_child(kind: str, star: Path, work: Path, args, model: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_child", kind, "--_star", str(star), "--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if model is not None:
        cmd += ["--_model", str(model), "--_predict-out", str(work / "predicted.star")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} on {star} failed ({proc.returncode}):\n{err[-3000:]}")
    rec = json.loads(out.strip().splitlines()[-1])
    rec.update({"wall_seconds_process": wall, "sampled_peak_rss_mib": sampler.peak_mib})
    return rec


# --- data -----------------------------------------------------------------------------------------------------
NETWORKS = {
    # A small rotinv-ae: the cheapest network, to show what the I/O and the STAR handling cost.
    "small": {"width": 8, "max_width": 16, "critic_width": 8},
}


def _job_network() -> dict:
    from relion_canon.job import FAST_ROTINV_AE

    return dict(FAST_ROTINV_AE)  # the network the whole job trains by default


def train_model(work: Path, network: str = "small") -> Path:
    """A rotinv-ae, one epoch on sim_tiny: quality is beside the point, the network's cost is not."""
    out = work / "model"
    options = NETWORKS[network] if network in NETWORKS else _job_network()
    sets = [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]
    cmd = [sys.executable, "-m", "relion_canon.cli.main", "train", "--i", str(SIM_TINY / "particles.star"),
           "--o", str(out), "--model", "rotinv-ae", *sets, "--epochs", "1", "--batch-size", "8", "--device", "cpu",
           "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"training the model failed:\n{res.stderr[-3000:]}")
    return out / "model.pt"


def bytes_needed(n: int, box: int = BOX) -> int:
    return 1024 + n * box * box * 4 + 2 * n * STAR_BYTES_PER_ROW


def fit_to_disk(n: int, free: int, log, box: int = BOX) -> int:
    """The size to run: ``n``, or as many particles as fit in 90 % of the free space (in thousands)."""
    if bytes_needed(n, box) <= 0.9 * free:
        return n
    fits = int((0.9 * free - 1024) // (box * box * 4 + 2 * STAR_BYTES_PER_ROW)) // 1000 * 1000
    log(f"  only {free / 2**30:.1f} GiB free: {n:,d} particles need {bytes_needed(n, box) / 2**30:.2f} GiB;"
        f" running {fits:,d} instead")
    return fits


def upsampled(images: np.ndarray, box: int) -> np.ndarray:
    """sim_tiny's images at a larger box over the same field of view (zero-padded in Fourier space): the model,
    trained at 32 px, then Fourier-crops them back, as it does with a user's larger particles."""
    if box == images.shape[-1]:
        return images
    n, small = images.shape[0], images.shape[-1]
    f = np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))
    big = np.zeros((n, box, box), np.complex128)
    lo = box // 2 - small // 2
    big[:, lo : lo + small, lo : lo + small] = f
    out = np.fft.ifft2(np.fft.ifftshift(big, axes=(-2, -1))).real * (box / small) ** 2
    return out.astype(np.float32)


def generate(work: Path, n: int, seed: int, box: int = BOX) -> tuple[Path, float]:
    """One n-image stack (sim_tiny's images cycled, at ``box`` px over sim_tiny's field of view, memory-mapped,
    chunk by chunk) and its particle STAR file."""
    import mrcfile
    import pandas as pd

    from relion_canon.io.imagename import format_image_name
    from relion_canon.io.star import read_star, write_star

    t0 = time.perf_counter()
    tiny = read_star(SIM_TINY / "particles.star")
    with mrcfile.open(SIM_TINY / "particles.mrcs") as m:
        pool = upsampled(np.array(m.data, np.float32), box)
    pixel_size = PIXEL_SIZE * BOX / box
    rel = "Extract/job007/particles.mrcs"
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    m = mrcfile.new_mmap(work / rel, shape=(n, box, box), mrc_mode=2, overwrite=True)
    try:
        m.set_image_stack()
        m.voxel_size = pixel_size
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            m.data[start:stop] = pool[np.arange(start, stop) % len(pool)]
        m.flush()
    finally:
        m.close()

    rng = np.random.default_rng(seed)
    src = tiny.particles
    cycle = np.arange(n) % len(src)
    per_mic = 300
    particles = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4096, n).round(1),
        "rlnCoordinateY": rng.uniform(0, 4096, n).round(1),
        "rlnClassNumber": np.ones(n, np.int64),
        "rlnAutopickFigureOfMerit": rng.uniform(0, 1, n).round(4),
        "rlnImageName": [format_image_name(i, rel) for i in range(n)],
        "rlnMicrographName": [f"MotionCorr/job002/Movies/mic_{i // per_mic:05d}.mrc" for i in range(n)],
        "rlnOpticsGroup": np.ones(n, np.int64),
        "rlnCtfMaxResolution": rng.uniform(3, 6, n).round(3),
        "rlnCtfFigureOfMerit": rng.uniform(0, 0.3, n).round(4),
        "rlnDefocusU": src["rlnDefocusU"].to_numpy()[cycle],
        "rlnDefocusV": src["rlnDefocusV"].to_numpy()[cycle],
        "rlnDefocusAngle": src["rlnDefocusAngle"].to_numpy()[cycle],
    })  # fmt: skip
    star = work / "particles.star"
    optics = tiny.optics_table.copy()
    optics["rlnImagePixelSize"] = pixel_size
    optics["rlnImageSize"] = box
    write_star({"optics": optics, "particles": particles}, star, version=30001)
    return star, time.perf_counter() - t0


# --- report ---------------------------------------------------------------------------------------------------
def _stack_words(args) -> str:
    box, network = getattr(args, "box", BOX), getattr(args, "network", "small")
    crop = "" if box == BOX else f" (Fourier-cropped to the model's {BOX} px)"
    return f"{box} px float32{crop}, {network} network"


def table(rows: list[dict], args) -> str:
    hdr = (f"{'N':>9s} {'stack GiB':>9s} {'STAR MiB':>8s} {'predict s':>9s} {'particles/s':>11s} {'vs first':>8s}"
           f" {'peak RSS MiB':>12s} {'vs first':>8s} {'sampled':>8s} {'after imports':>13s}"
           f" {'read_star s':>11s} {'its peak MiB':>12s}")  # fmt: skip
    first = rows[0]
    lines = [
        f"relion-canon predict (predict_file) on N particles, {_stack_words(args)}, one stack, batch {args.batch},"
        f" CPU {'(torch default threads)' if not args.threads else f'{args.threads} threads'}; each size in a fresh process",
        hdr,
        "-" * len(hdr),
    ]
    for r in rows:
        p, rs = r["predict"], r["read_star"]
        lines.append(
            f"{r['n']:>9,d} {r['stack_gib']:>9.2f} {r['star_mib']:>8.1f} {p['seconds']:>9.1f} {r['particles_per_s']:>11,.0f}"
            f" {r['particles_per_s'] / first['particles_per_s']:>8.2f} {p['peak_rss_mib']:>12.0f}"
            f" {p['peak_rss_mib'] / first['predict']['peak_rss_mib']:>8.2f}"
            f" {p['sampled_peak_rss_mib'] or float('nan'):>8.0f} {p['rss_after_imports_mib']:>13.0f}"
            f" {rs['seconds']:>11.1f} {rs['peak_rss_mib']:>12.0f}"
        )
    lines.append("")
    lines.append("peak RSS: VmHWM of the predicting process over its whole life (interpreter + torch + model included);"
                 " 'after imports' is its RSS before any particle is read; 'sampled' is psutil every 50 ms from outside.")
    lines.append("predict s: predict_file wall time (read STAR, load model, open stack, inference, write STAR);"
                 " read_star s / its peak: read_star alone in another fresh process (no torch imported).")
    loads = [r["predict"]["loadavg_1min_at_start"] for r in rows if r["predict"]["loadavg_1min_at_start"] is not None]
    if loads:
        lines.append(f"1-min load average when each predict started: {', '.join(f'{x:.1f}' for x in loads)} on"
                     f" {os.cpu_count()} cores (above ~{os.cpu_count()} other processes competed: throughput drops).")
    for a, b in zip(rows, rows[1:]):
        ratio = b["predict"]["peak_rss_mib"] / a["predict"]["peak_rss_mib"]
        lines.append(f"RSS ratio N={b['n']:,d} / N={a['n']:,d} ({b['n'] / a['n']:.0f}x the particles): {ratio:.2f}x"
                     f" ({'meets' if ratio < 1.2 else 'MISSES'} the target < 1.2x)")
    for r in rows:
        if r["n"] != r["requested"]:
            lines.append(f"N={r['requested']:,d} was scaled down to {r['n']:,d} to fit the free disk space")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path, box: int = BOX) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [r["predict"]["peak_rss_mib"] for r in rows], "o-", label="predict: peak RSS (VmHWM)")
    ax1.plot(n, [r["predict"]["rss_after_imports_mib"] for r in rows], "s--", label="predict: RSS after imports")
    ax1.plot(n, [r["read_star"]["peak_rss_mib"] for r in rows], "^:", label="read_star alone: peak RSS")
    ax1.set_xscale("log")
    ax1.set_xlabel("particles")
    ax1.set_ylabel("MiB")
    ax1.set_title("Peak memory")
    ax1.legend(fontsize=8)
    ax2.plot(n, [r["particles_per_s"] for r in rows], "o-")
    ax2.set_xscale("log")
    ax2.set_xlabel("particles")
    ax2.set_ylabel("particles / s (whole predict_file)")
    ax2.set_ylim(bottom=0)
    ax2.set_title(f"Throughput, {box} px, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict:
    import mrcfile
    import pandas

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "pandas": pandas.__version__, "mrcfile": mrcfile.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="particle counts, comma-separated")
    ap.add_argument("--batch", type=int, default=256, help="predict batch size (default 256, as the CLI)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--model", default=None, help="a model.pt for 32 px at 2.5 Å/px (default: train one first)")
    ap.add_argument("--box", type=int, default=BOX,
                    help="box of the generated stack (default 32; 64 = the same field of view at 1.25 Å/px, which the "
                         "32 px model Fourier-crops as the job does with 64 px particles)")
    ap.add_argument("--network", choices=["small", "job"], default="small",
                    help="small: a width-8 rotinv-ae (I/O-bound); job: the network the whole job trains by default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the temporary data folder is made (default: system temp)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder (default benchmarks/load/results)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_star", dest="star", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_model", dest="child_model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_predict-out", dest="predict_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.model = args.child_model
        child(args)
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="relion_canon_load_bench_", dir=base))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the data are removed when stopped
    t_start = time.perf_counter()
    rows: list[dict] = []
    try:
        if args.model:
            model = Path(args.model).resolve()
        else:
            log(f"training a rotinv-ae ({args.network} network) on test_data/sim_tiny (1 epoch) ...")
            model = train_model(work, args.network)
        for requested in sizes:
            n = fit_to_disk(requested, shutil.disk_usage(work).free, log, args.box)
            if n < 1000:
                log(f"  skipping N={requested:,d}: not even 1,000 particles fit on the disk")
                continue
            size_dir = work / f"n{n}"
            size_dir.mkdir()
            log(f"N={n:,d}: writing {n * args.box ** 2 * 4 / 2**30:.2f} GiB of particles and their STAR file ...")
            star, gen_s = generate(size_dir, n, args.seed, args.box)
            log(f"  written in {gen_s:.1f} s; read_star alone ...")
            rs = run_child("read_star", star, size_dir, args)
            assert rs["n"] == n, rs
            log(f"  {rs['seconds']:.1f} s, peak {rs['peak_rss_mib']:.0f} MiB; predict ...")
            pr = run_child("predict", star, size_dir, args, model=model)
            predicted = size_dir / "predicted.star"
            row = {
                "requested": requested, "n": n, "stack_gib": n * args.box ** 2 * 4 / 2**30,
                "star_mib": star.stat().st_size / MIB, "output_star_mib": predicted.stat().st_size / MIB,
                "generate_seconds": gen_s, "read_star": rs, "predict": pr, "particles_per_s": n / pr["seconds"],
            }  # fmt: skip
            rows.append(row)
            log(f"  {pr['seconds']:.1f} s ({row['particles_per_s']:,.0f} particles/s), peak RSS {pr['peak_rss_mib']:.0f} MiB"
                f" (after imports {pr['rss_after_imports_mib']:.0f})")
            if not args.keep:
                shutil.rmtree(size_dir)
        if not rows:
            log("error: no size could be run")
            return 2
        report = table(rows, args)
        log("")
        log(report)
        result = {
            "benchmark": "load",
            "config": {"sizes_requested": sizes, "box": args.box, "model_box": BOX, "network": args.network,
                       "pixel_size": PIXEL_SIZE * BOX / args.box, "batch": args.batch,
                       "threads": args.threads, "model": "rotinv-ae width 8 (1 epoch on sim_tiny)" if not args.model
                       else str(args.model), "seed": args.seed},
            "machine": machine_info(),
            "rows": rows,
            "rss_target_ratio": 1.2,
            "wall_seconds": time.perf_counter() - t_start,
        }  # fmt: skip
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "table.txt").write_text(report + "\n")
        figure(rows, out / "load.png", args.box)
        log(f"\nwrote {out / 'results.json'}, {out / 'table.txt'}, {out / 'load.png'}")
    finally:
        if args.keep:
            log(f"kept data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
