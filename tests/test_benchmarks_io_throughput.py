"""Smoke-sized run of benchmarks/io_throughput/run.py: it runs end to end and writes its results.

Only the shape of the output is checked; speed is never asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "io_throughput" / "run.py"


def test_io_throughput_smoke(tmp_path):
    out = tmp_path / "results"
    work = tmp_path / "work"
    cmd = [
        sys.executable, str(SCRIPT),
        "--n", "2000", "--box", "32", "--repeats", "1",
        "--workdir", str(work), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    res = json.loads((out / "results.json").read_text())
    assert {"config", "machine", "cache", "throughput", "setup", "rss", "rss_ratio", "baseline"} <= set(res)
    assert res["config"]["n"] == 2000 and res["config"]["box"] == 32 and res["config"]["n_small"] == 200

    rows = res["throughput"]
    seen = {(r["name"], r["layout"], r["access"]) for r in rows}
    assert ("numpy.fromfile (baseline)", "single", "sequential") in seen
    for layout in ("single", "per_mic"):
        for access in ("sequential", "random"):
            assert ("ParticleSource", layout, access) in seen
    for r in rows:
        for state in ("cold", "warm"):
            assert r[state]["particles_per_s"] > 0
            assert r[f"ratio_{state}"] > 0
    assert rows[0]["ratio_warm"] == 1.0 and rows[0]["ratio_cold"] == 1.0

    for r in res["rss"]:
        assert r["n"] in (200, 2000)
        assert r["peak_rss_mib"] > 0
    assert res["rss_ratio"]["current/single"] > 0 and res["rss_ratio"]["current/per_mic"] > 0

    assert (out / "io_throughput.png").stat().st_size > 0
    assert (out / "table.txt").read_text().strip()
    # the generated data are removed at the end
    assert work.is_dir() and not any(work.iterdir())
