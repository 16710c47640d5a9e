"""The job's last step at scale: writing particles.star and its selected and rejected parts for N particles,
a slice of rows at a time (``relion_canon.io.result_stars``, what the job does) against copying the whole table
with the new columns and its two parts first (what it did before). Each way runs in a fresh process that first
reads the STAR file, as the job holds it; reported: wall time of the writing, peak RSS (VmHWM) after reading
and at the end, and the growth the writing adds.

    python benchmarks/scale/write_results.py --i W/set_1000000/particles.star
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("slices", "whole")


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_once(star_path: Path, way: str, out: Path) -> dict:
    """Read the STAR, make the job's new columns (random, of the job's types), write the three files ``way``."""
    import numpy as np

    from relion_canon.io.result_stars import write_result_stars
    from relion_canon.io.star import read_star, write_star

    star = read_star(star_path)
    n = len(star)
    rng = np.random.default_rng(0)
    columns = {"rlnClassNumber": rng.integers(1, 51, n), "rlnAnglePsi": rng.uniform(-180, 180, n),
               "rlnAnglePsiPrior": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.normal(0, 6, n),
               "rlnOriginYAngst": rng.normal(0, 6, n), "rlnCanonDefocus": rng.uniform(5000, 25000, n),
               "rlnCanonDefocusLatent": rng.uniform(5000, 25000, n), "rlnParticleFigureOfMerit": rng.uniform(0, 9, n),
               "rlnParticleSelectZScore": rng.normal(0, 1, n), "rlnCanonIsOutlier": (rng.random(n) < 0.1).astype(np.int64),
               "rlnCanonAlignmentScore": rng.uniform(0, 0.2, n)}
    keep = columns["rlnCanonIsOutlier"] == 0
    after_read = _vm_hwm_mb()
    t0 = time.perf_counter()
    paths = [out / f"{name}.star" for name in ("particles", "selected", "rejected")]
    if way == "slices":
        write_result_stars(star, columns, keep, *paths)
    else:
        whole = star.with_columns(columns)
        write_star(whole, paths[0])
        write_star(whole.subset(keep), paths[1])
        write_star(whole.subset(~keep), paths[2])
    seconds = time.perf_counter() - t0
    peak = _vm_hwm_mb()
    return {"way": way, "n": n, "write_seconds": seconds, "peak_after_read_mb": after_read, "peak_mb": peak,
            "growth_mb": peak - after_read, "bytes": sum(p.stat().st_size for p in paths)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--i", required=True, type=Path, help="a particle STAR file (e.g. one of benchmarks/scale's sets)")
    p.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one way, in this process (the child's part)
    p.add_argument("--scratch", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.way:
        print(json.dumps(write_once(args.i, args.way, args.scratch)))
        return 0
    rows = []
    for way in WAYS:
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            done = subprocess.run([sys.executable, __file__, "--i", str(args.i), "--way", way, "--scratch", tmp],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    same = rows[0]["bytes"] == rows[1]["bytes"]
    print(f"{rows[0]['n']:,} particles ({'the same bytes' if same else 'DIFFERENT sizes'} both ways)")
    print(f"{'way':>8} {'write s':>8} {'peak after read MB':>19} {'peak MB':>8} {'growth MB':>10}")
    for r in rows:
        print(f"{r['way']:>8} {r['write_seconds']:8.1f} {r['peak_after_read_mb']:19.0f} {r['peak_mb']:8.0f} "
              f"{r['growth_mb']:10.0f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
