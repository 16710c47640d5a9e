#!/usr/bin/env python
"""Particle I/O benchmark: read throughput and peak memory of ``relion_canon.io.ParticleSource``.

One command (see README.md next to this file)::

    python benchmarks/io_throughput/run.py [--n 100000 --box 64 --workdir DIR --out DIR]

It writes a random float32 particle stack twice (one big stack, and per-micrograph stacks of 200 particles as
RELION's Extract writes them) with RELION 3.1 particle STAR files naming every image, then measures in the
same run:

* particles/s of sequential batched reads (``iter_batches``), random batched reads (``read`` of shuffled
  indices) for both layouts, and the baseline: a plain sequential ``numpy.fromfile`` of the single stack.
  Every figure is also given as a ratio to that baseline (the ratio is what matters; absolute numbers drift
  on shared machines). Each is measured cold (files evicted from the page cache with
  ``posix_fadvise(DONTNEED)``, residency checked with ``mincore``) and warm (files in the page cache; best
  of ``--repeats`` passes).
* peak RSS (``VmHWM``) of a full sequential pass through ParticleSource at N/10 and N particles, each in a
  fresh subprocess, and their ratio (target: 10x particles < 1.2x RSS).

When ``prototype_source.py`` sits next to this file (a patched copy of ``relion_canon/io/source.py``), the
ParticleSource rows and the RSS runs are repeated with it, so a proposed fix is measured against the
current code in the same run (``--no-prototype`` skips it).

Prints a table, writes ``results.json`` and ``io_throughput.png`` into ``--out``, and removes the generated
data (a temporary folder under ``--workdir``) at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROTOTYPE = HERE / "prototype_source.py"
HEADER_BYTES = 1024  # MRC header; the stacks written here have no extended header
MIB = 1024 * 1024


# --- process memory and page cache -----------------------------------------------------------------------------
def proc_status() -> dict[str, float]:
    """VmRSS / VmHWM / RssAnon / RssFile of this process in MiB (Linux); empty elsewhere."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def peak_rss_mib() -> float:
    """Peak RSS of this process: VmHWM where available (it belongs to this process image alone;
    ``ru_maxrss`` can carry the parent's high-water mark across fork+exec), else ``ru_maxrss``."""
    hwm = proc_status().get("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' pages that are in the page cache (``mincore``); None where unavailable."""
    if _LIBC is None:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for p in paths:
        size = p.stat().st_size
        if size == 0:
            continue
        npages = (size + page - 1) // page
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = _LIBC.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = (ctypes.c_ubyte * npages)()
                if _LIBC.mincore(addr, size, vec) != 0:
                    return None
                resident += int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1))
                total += npages
            finally:
                _LIBC.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / total if total else None


def evict(paths: list[Path]) -> None:
    """Drop the (already fsync'ed) files from the page cache; no root needed, nothing else is touched."""
    if not hasattr(os, "posix_fadvise"):
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_all(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- data -------------------------------------------------------------------------------------------------------
def _star_blocks(names: list[str], mics: list[str], box: int, rng: np.random.Generator):
    import pandas as pd

    n = len(names)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [1.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [2.5],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    defocus = rng.uniform(5000.0, 25000.0, n).round(1)
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(0, 4096, n).round(1),
            "rlnCoordinateY": rng.uniform(0, 4096, n).round(1),
            "rlnAnglePsi": rng.uniform(-180, 180, n).round(3),
            "rlnClassNumber": np.ones(n, np.int64),
            "rlnAutopickFigureOfMerit": rng.uniform(0, 1, n).round(4),
            "rlnImageName": names,
            "rlnMicrographName": mics,
            "rlnOpticsGroup": np.ones(n, np.int64),
            "rlnDefocusU": defocus,
            "rlnDefocusV": defocus,
            "rlnDefocusAngle": rng.uniform(0, 180, n).round(2),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": np.zeros(n),
        }
    )
    return {"optics": optics, "particles": particles}


def generate(work: Path, n: int, box: int, per_mic: int, seed: int) -> dict:
    """Both layouts, the same images in both, written chunk by chunk; STAR files for N and N/10 particles."""
    from relion_canon.io import format_image_name, stack_writer, write_stack, write_star

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    single_rel = "Extract/job001/particles.mrcs"
    single = work / single_rel
    n_mics = (n + per_mic - 1) // per_mic
    mic_rel = [f"Extract/job002/Movies/mic_{m + 1:05d}.mrcs" for m in range(n_mics)]
    chunk = per_mic * max(1, 4096 // per_mic)  # whole micrographs per chunk, ~4k images
    with stack_writer(single, n, box, 2.5) as out:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            images = rng.standard_normal((stop - start, box, box), dtype=np.float32)
            out[start:stop] = images
            for m in range(start // per_mic, (stop + per_mic - 1) // per_mic):
                lo, hi = m * per_mic, min(n, (m + 1) * per_mic)
                write_stack(work / mic_rel[m], images[lo - start : hi - start], 2.5)
    t_images = time.perf_counter() - t0
    gen_status = proc_status()

    mic_files = [work / r for r in mic_rel]
    fsync_all([single, *mic_files])

    rows = np.arange(n)
    mic_of = rows // per_mic
    single_names = [format_image_name(i, single_rel) for i in range(n)]
    mic_names = [format_image_name(int(i % per_mic), mic_rel[int(m)]) for i, m in zip(rows, mic_of)]
    micrographs = [f"MotionCorr/job003/Movies/mic_{int(m) + 1:05d}.mrc" for m in mic_of]
    n_small = max(1, n // 10)
    stars = {}
    for layout, names in (("single", single_names), ("per_mic", mic_names)):
        blocks = _star_blocks(names, micrographs, box, np.random.default_rng(seed + 1))
        stars[layout] = work / f"particles_{layout}.star"
        write_star(blocks, stars[layout], version=30001)
        small = {"optics": blocks["optics"], "particles": blocks["particles"].iloc[:n_small].reset_index(drop=True)}
        stars[f"{layout}_small"] = work / f"particles_{layout}_{n_small}.star"
        write_star(small, stars[f"{layout}_small"], version=30001)
    return {
        "files": {"single": [single], "per_mic": mic_files},
        "stars": stars,
        "n_small": n_small,
        "n_mics": n_mics,
        "seconds_images": t_images,
        "seconds_total": time.perf_counter() - t0,
        "generator_status_mib": gen_status,
    }


# --- implementations under test --------------------------------------------------------------------------------
_IMPLS: dict[str, type] = {}


def load_impl(name: str):
    """ParticleSource class: 'current' (relion_canon.io) or 'prototype' (prototype_source.py next to this file)."""
    if name in _IMPLS:
        return _IMPLS[name]
    if name == "current":
        from relion_canon.io import ParticleSource

        _IMPLS[name] = ParticleSource
        return ParticleSource
    spec = importlib.util.spec_from_file_location("io_bench_prototype_source", PROTOTYPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    _IMPLS[name] = module.ParticleSource
    return module.ParticleSource


def open_source(impl: str, star_path: Path, work: Path, check_finite: bool = True):
    from relion_canon.io import read_star

    return load_impl(impl).from_star(read_star(star_path), project_dir=work, check_finite=check_finite)


# --- throughput ------------------------------------------------------------------------------------------------
def pass_fromfile(paths: list[Path], box: int, batch: int) -> int:
    """Baseline: plain sequential numpy.fromfile of the stack file(s), ``batch`` images per call."""
    count = batch * box * box
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            a = np.fromfile(fh, np.float32, count=count, offset=HEADER_BYTES)
            while a.size:
                n += a.size // (box * box)
                a = np.fromfile(fh, np.float32, count=count)
    return n


def pass_sequential(source, batch: int) -> int:
    n = 0
    for idx, images in source.iter_batches(batch):
        n += len(images)
    return n


def pass_random(source, batch: int, order: np.ndarray) -> int:
    n = 0
    for start in range(0, len(order), batch):
        n += len(source.read(order[start : start + batch]))
    return n


def run_throughput(args, work: Path, data: dict, impls: list[str], log) -> tuple[list[dict], list[dict]]:
    """Every reader, cold then warm, in interleaved rounds (round r runs each reader once), so that load from
    other processes on a shared machine hits all readers alike; the best pass of the rounds is reported."""
    from relion_canon.io import read_star

    n, box, batch = args.n, args.box, args.batch
    order = np.random.default_rng(args.seed + 2).permutation(n)
    files = data["files"]
    specs = [dict(name="numpy.fromfile (baseline)", layout="single", access="sequential", impl="-")]
    for impl in impls:
        tag = "ParticleSource" if impl == "current" else "ParticleSource [prototype]"
        for layout in ("single", "per_mic"):
            for access in ("sequential", "random"):
                specs.append(dict(name=tag, layout=layout, access=access, impl=impl))
    specs.append(dict(name="numpy.fromfile", layout="per_mic", access="sequential", impl="-"))
    specs.append(dict(name="ParticleSource check_finite=False", layout="single", access="sequential", impl="current"))

    # STAR parsing and from_star (which opens every stack once) are timed apart, with the files cached.
    for paths in files.values():
        pass_fromfile(paths, box, batch)
    stars: dict[str, object] = {}
    setup: list[dict] = []
    for impl in impls:
        for layout in ("single", "per_mic"):
            t0 = time.perf_counter()
            star = read_star(data["stars"][layout])
            t1 = time.perf_counter()
            load_impl(impl).from_star(star, project_dir=work).close()
            t2 = time.perf_counter()
            stars[layout] = star
            setup.append({"impl": impl, "layout": layout, "seconds_read_star": t1 - t0, "seconds_from_star": t2 - t1})

    def one_pass(spec: dict) -> tuple[float, float]:
        paths = files[spec["layout"]]
        if spec["impl"] == "-":
            w0, c0 = time.perf_counter(), time.process_time()
            got = pass_fromfile(paths, box, batch)
        else:
            cls = load_impl(spec["impl"])
            source = cls.from_star(stars[spec["layout"]], project_dir=work, check_finite="=False" not in spec["name"])
            w0, c0 = time.perf_counter(), time.process_time()
            got = pass_sequential(source, batch) if spec["access"] == "sequential" else pass_random(source, batch, order)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if spec["impl"] != "-":
            source.close()
        if got != n:
            raise RuntimeError(f"{spec}: read {got} particles, expected {n}")
        return wall, cpu

    runs = {(state, i): [] for state in ("cold", "warm") for i in range(len(specs))}
    for state in ("cold", "warm"):
        for rnd in range(args.repeats):
            for i, spec in enumerate(specs):
                paths = files[spec["layout"]]
                if state == "cold":
                    evict(paths)
                else:  # re-read: idle page cache may have been reclaimed during a long pass (e.g. by DAMON)
                    pass_fromfile(paths, box, batch)
                resident = resident_fraction(paths)
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                wall, cpu = one_pass(spec)
                runs[(state, i)].append({"wall_s": wall, "cpu_s": cpu, "resident_fraction_before": resident, "loadavg_1min": load})
                log(
                    f"  {state} round {rnd + 1}/{args.repeats}: {spec['name']:34s} {spec['layout']:8s} {spec['access']:10s}"
                    f" {n / wall:>11,.0f} particles/s (CPU {n / cpu:>11,.0f}/s; load {_fmt(load, '.1f')})"
                )
    rows: list[dict] = []
    for i, spec in enumerate(specs):
        row = dict(spec, n_files=len(files[spec["layout"]]))
        for state in ("cold", "warm"):
            passes = runs[(state, i)]
            best_wall = min(p["wall_s"] for p in passes)
            best_cpu = min(p["cpu_s"] for p in passes)
            row[state] = {
                "particles_per_s": n / best_wall,
                "particles_per_cpu_s": n / best_cpu,
                "seconds": best_wall,
                "passes": passes,
            }
        rows.append(row)
    base = rows[0]
    for row in rows:
        for state in ("cold", "warm"):
            row[f"ratio_{state}"] = row[state]["particles_per_s"] / base[state]["particles_per_s"]
            row[f"ratio_{state}_cpu"] = row[state]["particles_per_cpu_s"] / base[state]["particles_per_cpu_s"]
    return rows, setup


# --- memory (fresh subprocess per figure) ----------------------------------------------------------------------
def rss_child(args) -> None:
    """Entry point of the subprocess: one full sequential pass; prints one JSON line."""
    work = Path(args.workdir)
    import relion_canon.io  # noqa: F401  (imports belong to the baseline figure)

    after_import = proc_status().get("VmRSS")

    t0 = time.perf_counter()
    source = open_source(args.impl, Path(args.child_star), work)
    after_open = proc_status()
    peak_open = peak_rss_mib()  # includes the STAR parse
    reset = reset_peak_rss()
    n = pass_sequential(source, args.batch)
    end = proc_status()  # before close: mapped pages still count here
    peak_pass = peak_rss_mib()
    source.close()
    print(
        json.dumps(
            {
                "n": n,
                "seconds": time.perf_counter() - t0,
                "rss_after_import_mib": after_import,
                "rss_after_open_mib": after_open.get("VmRSS"),
                "peak_rss_open_mib": peak_open,
                "peak_rss_pass_mib": peak_pass if reset else None,
                "peak_rss_mib": max(peak_open, peak_pass),
                "rss_end_mib": end.get("VmRSS"),
                "rss_anon_end_mib": end.get("RssAnon"),
                "rss_file_end_mib": end.get("RssFile"),
            }
        )
    )


def run_rss(args, work: Path, data: dict, impls: list[str], log) -> tuple[list[dict], dict, dict]:
    results: list[dict] = []
    ratios: dict[str, float] = {}
    pass_ratios: dict[str, float] = {}
    for impl in impls:
        for layout in ("single", "per_mic"):
            by_n = {}
            for key, n in ((f"{layout}_small", data["n_small"]), (layout, args.n)):
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--_rss-child",
                    str(data["stars"][key]),
                    "--impl",
                    impl,
                    "--workdir",
                    str(work),
                    "--batch",
                    str(args.batch),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"RSS subprocess failed ({impl}, {key}):\n{proc.stderr}")
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                if rec["n"] != n:
                    raise RuntimeError(f"RSS subprocess read {rec['n']} particles, expected {n}")
                rec.update({"impl": impl, "layout": layout})
                results.append(rec)
                by_n[n] = rec
                log(
                    f"  {impl:9s} {layout:8s} N={n:>8,d}: peak {rec['peak_rss_mib']:8.1f} MiB, during the pass "
                    f"{_fmt(rec['peak_rss_pass_mib'])} MiB (after open {rec['rss_after_open_mib']:.1f}, "
                    f"file-backed at end {rec['rss_file_end_mib']:.1f})"
                )
            key = f"{impl}/{layout}"
            ratios[key] = by_n[args.n]["peak_rss_mib"] / by_n[data["n_small"]]["peak_rss_mib"]
            if by_n[args.n]["peak_rss_pass_mib"] and by_n[data["n_small"]]["peak_rss_pass_mib"]:
                pass_ratios[key] = by_n[args.n]["peak_rss_pass_mib"] / by_n[data["n_small"]]["peak_rss_pass_mib"]
    return results, ratios, pass_ratios


def _fmt(x, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


# --- report ----------------------------------------------------------------------------------------------------
def table(rows: list[dict], setup: list[dict], rss: list[dict], ratios: dict, pass_ratios: dict, args, data: dict) -> str:
    lines = []
    hdr = (
        f"{'reader':34s} {'layout':8s} {'access':10s} {'files':>5s} {'cold p/s':>10s} {'ratio':>6s}"
        f" {'warm p/s':>10s} {'ratio':>6s} {'warm p/CPU-s':>12s} {'ratio':>6s}"
    )
    lines += [
        f"Particle read throughput, N={args.n:,d}, {args.box} px float32, batch {args.batch}"
        f" (per-micrograph layout: {data['n_mics']} stacks of {args.per_mic}); ratio = to numpy.fromfile of the single stack",
        hdr,
        "-" * len(hdr),
    ]
    for r in rows:
        lines.append(
            f"{r['name']:34s} {r['layout']:8s} {r['access']:10s} {r['n_files']:>5d}"
            f" {r['cold']['particles_per_s']:>10,.0f} {r['ratio_cold']:>6.3f}"
            f" {r['warm']['particles_per_s']:>10,.0f} {r['ratio_warm']:>6.3f}"
            f" {r['warm']['particles_per_cpu_s']:>12,.0f} {r['ratio_warm_cpu']:>6.3f}"
        )

    def passes(state: str, key: str) -> list[float]:
        return [p[key] for r in rows for p in r[state]["passes"] if p[key] is not None]

    cold_res, warm_res = passes("cold", "resident_fraction_before"), passes("warm", "resident_fraction_before")
    if cold_res:
        lines.append(
            f"cold: files evicted (fsync + posix_fadvise DONTNEED) before each pass, best of {args.repeats}; page-cache"
            f" residency before the pass {100 * min(cold_res):.1f}-{100 * max(cold_res):.1f} % (mincore). The disk is"
            " virtual: the host may still cache it."
        )
    if warm_res:
        lines.append(
            f"warm: files in the page cache ({100 * min(warm_res):.1f}-{100 * max(warm_res):.1f} % resident), best of"
            f" {args.repeats} passes. p/CPU-s: particles per CPU-second of this process (user + system), less"
            " sensitive to other load."
        )
    loads = passes("cold", "loadavg_1min") + passes("warm", "loadavg_1min")
    if loads:
        lines.append(
            f"1-min load average during the passes: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
            " (above ~1 means other processes competed; rounds are interleaved so all readers share it)."
        )
    lines.append("")
    for s in setup:
        lines.append(
            f"setup ({s['impl']}, {s['layout']}): read_star {s['seconds_read_star']:.2f} s,"
            f" ParticleSource.from_star {s['seconds_from_star']:.2f} s"
        )
    lines.append("")
    hdr2 = (
        f"{'impl':9s} {'layout':8s} {'N':>8s} {'peak MiB':>9s} {'peak in pass':>12s} {'peak to open':>12s}"
        f" {'RSS after open':>14s} {'end: file-backed':>16s} {'anon':>6s}"
    )
    lines += [
        "Peak RSS (VmHWM, MiB) of read_star + from_star + one full sequential pass, fresh subprocess each;"
        " 'peak in pass' is measured after resetting VmHWM once the source is open",
        hdr2,
        "-" * len(hdr2),
    ]
    for r in rss:
        lines.append(
            f"{r['impl']:9s} {r['layout']:8s} {r['n']:>8,d} {r['peak_rss_mib']:>9.1f} {_fmt(r['peak_rss_pass_mib']):>12s}"
            f" {r['peak_rss_open_mib']:>12.1f} {r['rss_after_open_mib']:>14.1f} {r['rss_file_end_mib']:>16.1f}"
            f" {r['rss_anon_end_mib']:>6.1f}"
        )
    for key, ratio in ratios.items():
        verdict = "meets" if ratio < 1.2 else "MISSES"
        extra = f"; pass alone {pass_ratios[key]:.2f}x" if key in pass_ratios else ""
        lines.append(
            f"RSS ratio N={args.n:,d} / N={data['n_small']:,d} ({key}): {ratio:.2f}x ({verdict} target < 1.2x){extra}"
        )
    return "\n".join(lines)


def figure(rows: list[dict], rss: list[dict], ratios: dict, pass_ratios: dict, args, data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.45 * len(rows) + 2.5), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r['name']}\n{r['layout']}, {r['access']}" for r in rows]
    y = np.arange(len(rows))
    h = 0.38
    for off, state, color in ((-h / 2, "cold", "#9ecae1"), (h / 2, "warm", "#3182bd")):
        vals = [r[state]["particles_per_s"] for r in rows]
        ax1.barh(y + off, vals, h, label=f"{state} page cache", color=color)
        for yi, v, r in zip(y, vals, rows):
            ax1.text(v, yi + off, f" {r[f'ratio_{state}']:.3g}x", va="center", fontsize=7)
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xscale("log")
    ax1.set_xlim(right=8 * max(r[s]["particles_per_s"] for r in rows for s in ("cold", "warm")))  # room for labels
    ax1.set_xlabel("throughput (particles/s, log scale); label: ratio to numpy.fromfile baseline")
    ax1.set_title(f"Read throughput, {args.n:,d} particles, {args.box} px float32, batch {args.batch}")
    ax1.legend(loc="lower right", fontsize=8)

    groups = sorted({(r["impl"], r["layout"]) for r in rss})
    x = np.arange(len(groups))
    w = 0.38
    for off, n, color in ((-w / 2, data["n_small"], "#fdae6b"), (w / 2, args.n, "#e6550d")):
        vals = [next(r["peak_rss_mib"] for r in rss if (r["impl"], r["layout"]) == g and r["n"] == n) for g in groups]
        ax2.bar(x + off, vals, w, label=f"N = {n:,d}", color=color)
        passes = [
            next(r["peak_rss_pass_mib"] for r in rss if (r["impl"], r["layout"]) == g and r["n"] == n) for g in groups
        ]
        if all(p is not None for p in passes):
            ax2.scatter(x + off, passes, marker="_", s=400, color="black", zorder=3, label="peak during the pass" if n == args.n else None)
    for xi, g in zip(x, groups):
        top = max(r["peak_rss_mib"] for r in rss if (r["impl"], r["layout"]) == g)
        key = f"{g[0]}/{g[1]}"
        label = f"{ratios[key]:.2f}x" + (f"\n(pass {pass_ratios[key]:.2f}x)" if key in pass_ratios else "")
        ax2.text(xi, top, label, ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(x, [f"{i}\n{l}" for i, l in groups], fontsize=8)
    ax2.set_ylabel("peak RSS (MiB)")
    ax2.set_ylim(top=1.15 * max(r["peak_rss_mib"] for r in rss))
    ax2.set_title("Peak RSS: STAR + open + full sequential pass\n(target: 10x N < 1.2x RSS)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict:
    import mrcfile
    import pandas

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "mrcfile": mrcfile.__version__,
        "pandas": pandas.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="particles (default 100000)")
    ap.add_argument("--box", type=int, default=64, help="box size in pixels (default 64)")
    ap.add_argument("--batch", type=int, default=256, help="particles per read (default 256)")
    ap.add_argument("--per-mic", type=int, default=200, help="particles per micrograph stack (default 200)")
    ap.add_argument("--repeats", type=int, default=2, help="warm passes per figure; the best is reported (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the temporary data folder is made (default: system temp)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder (default benchmarks/io_throughput/results)")
    ap.add_argument("--no-prototype", action="store_true", help="do not measure prototype_source.py even if present")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--_rss-child", dest="child_star", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="current", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_star:
        rss_child(args)
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    impls = ["current"] + (["prototype"] if PROTOTYPE.exists() and not args.no_prototype else [])
    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    need = 2 * args.n * args.box * args.box * 4 + 64 * MIB
    free = shutil.disk_usage(base).free
    if free < need * 1.1:
        log(f"error: {base} has {free / 2**30:.1f} GiB free; the data need {need / 2**30:.1f} GiB (use --workdir)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="relion_canon_io_bench_", dir=base))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the data are removed when stopped
    t_start = time.perf_counter()
    try:
        log(f"generating {args.n:,d} particles x 2 layouts ({need / 2**30:.2f} GiB) in {work} ...")
        data = generate(work, args.n, args.box, args.per_mic, args.seed)
        log(f"  done in {data['seconds_total']:.1f} s; generator peak RSS {data['generator_status_mib'].get('VmHWM', float('nan')):.0f} MiB")
        log("throughput:")
        rows, setup = run_throughput(args, work, data, impls, log)
        log("peak RSS (fresh subprocesses):")
        rss, ratios, pass_ratios = run_rss(args, work, data, impls, log)
        report = table(rows, setup, rss, ratios, pass_ratios, args, data)
        log("")
        log(report)
        result = {
            "benchmark": "io_throughput",
            "config": {
                "n": args.n,
                "n_small": data["n_small"],
                "box": args.box,
                "dtype": "float32",
                "batch": args.batch,
                "per_mic": args.per_mic,
                "n_mics": data["n_mics"],
                "repeats": args.repeats,
                "seed": args.seed,
                "implementations": impls,
            },
            "machine": machine_info(),
            "cache": {
                "cold": "files evicted with posix_fadvise(POSIX_FADV_DONTNEED) after fsync before each pass; "
                "resident_fraction_before is mincore's page-cache residency just before the pass (a virtual disk "
                "may be cached by the host)",
                "warm": f"files in the page cache; best of {args.repeats} passes",
                "rounds": "each round runs every reader once (interleaved), cold rounds first; loadavg_1min per pass",
            },
            "generation": {
                "seconds_images": data["seconds_images"],
                "seconds_total": data["seconds_total"],
                "generator_status_mib": data["generator_status_mib"],
            },
            "throughput": rows,
            "baseline": "numpy.fromfile sequential read of the single stack (header skipped via offset)",
            "setup": setup,
            "rss": rss,
            "rss_ratio": ratios,
            "rss_ratio_pass": pass_ratios,
            "rss_target_ratio": 1.2,
            "wall_seconds": time.perf_counter() - t_start,
        }
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "table.txt").write_text(report + "\n")
        figure(rows, rss, ratios, pass_ratios, args, data, out / "io_throughput.png")
        log(f"\nwrote {out / 'results.json'}, {out / 'table.txt'}, {out / 'io_throughput.png'}")
    finally:
        if args.keep:
            log(f"kept data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
