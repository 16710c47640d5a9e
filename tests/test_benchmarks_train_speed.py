"""Smoke-sized run of benchmarks/train_speed: it runs end to end and reports every figure (never timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_speed_smoke(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks/train_speed/run.py"), "--n", "64", "--box", "32", "--epochs", "1",
           "--batch-size", "32", "--threads", "1", "--devices", "cpu", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert {r["model"] for r in result["rows"]} == {"rotinv-ae", "vaegan", "spatial-vae"}
    for row in result["rows"]:
        for key in ("train_particles_per_s", "infer_particles_per_s", "peak_rss_mb"):
            assert row[key] > 0, (row["model"], key)
    assert (tmp_path / "results.png").stat().st_size > 0
