"""Smoke-sized run of benchmarks/vs_relion: both programs run on the same particles and every figure is
reported (never timed or judged for accuracy here: a 1-iteration, 1-epoch run says nothing about either)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.relion
def test_vs_relion_smoke(require_relion, tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks/vs_relion/run.py"), "--n", "60", "--snr", "0.1", "--junk", "0.1",
           "--box", "32", "--relion-iter", "1", "--epochs", "1", "--threads", "2", "--workdir", str(tmp_path),
           "--out", str(tmp_path / "results"), "--timeout", "600"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / "results/results.json").read_text())
    (row,) = result["rows"]
    assert (row["n"], row["snr"], row["junk"]) == (60, 0.1, 0.1)
    assert row["n_true_particles"] == 54
    for key in ("ours_psi_rmse", "ours_psi_median", "relion_psi_rmse", "relion_psi_median", "agreement_psi_rmse",
                "agreement_psi_median", "network_psi_rmse", "network_psi_median"):
        assert 0 <= row[key] <= 180, key
    for key in ("ours_auc", "relion_auc_maxvalueprob", "relion_auc_loglikeli"):
        assert 0 <= row[key] <= 1, key
    for key in ("ours_wall_s", "relion_wall_s", "ours_cpu_s", "relion_cpu_s", "ours_peak_rss_mb",
                "relion_peak_rss_mb", "relion_load_average"):
        assert row[key] > 0, key
    # Two threads at most on each side: CPU time cannot exceed twice the wall time by much.
    assert row["ours_cpu_s"] < 2.5 * row["ours_wall_s"] and row["relion_cpu_s"] < 2.5 * row["relion_wall_s"]
    assert math.isclose(row["time_ratio_relion_over_ours"], row["relion_wall_s"] / row["ours_wall_s"])
    assert row["ours_epochs"] == 1
    assert "--K 1 --iter 1 --psi_step 6" in row["relion_command"]
    assert result["machine"]["relion"].startswith("RELION version: 3.1")
    assert (tmp_path / "results/error_vs_time.png").stat().st_size > 0
    assert "psi rMSE ours" in (tmp_path / "results/table.txt").read_text()
    # The scratch projects are removed unless --keep.
    assert not list(tmp_path.glob("vs_relion_*"))
