"""Smoke-sized run of benchmarks/load/run.py: it runs end to end and writes its results.

Only the shape of the output is checked; speed and memory are never asserted in tests.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from relion_canon.context import QUIET
from relion_canon.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "load" / "run.py"


def test_load_benchmark_smoke(tmp_path):
    # A model trained here (seconds) rather than by the script, which would pay for one more torch start-up.
    config = TrainConfig(model="rotinv-ae", model_options={"width": 8, "max_width": 16, "critic_width": 8}, epochs=1,
                         batch_size=8, device="cpu", threads=1)
    model = train(REPO / "test_data/sim_tiny/particles.star", tmp_path / "model", config,
                  context=QUIET).model_path
    out, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--sizes", "1000", "--threads", "1", "--model", str(model),
           "--workdir", str(work), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    res = json.loads((out / "results.json").read_text())
    assert {"config", "machine", "rows", "rss_target_ratio", "wall_seconds"} <= set(res)
    assert [r["n"] for r in res["rows"]] == [1000] == [r["requested"] for r in res["rows"]]
    for r in res["rows"]:
        assert r["particles_per_s"] > 0 and r["stack_gib"] > 0 and r["star_mib"] > 0
        assert r["read_star"]["n"] == r["n"]
        for kind in ("predict", "read_star"):
            assert r[kind]["peak_rss_mib"] >= r[kind]["rss_after_imports_mib"] > 0
        assert r["predict"]["threads"] == 1
    table = (out / "table.txt").read_text()
    assert "particles/s" in table and "peak RSS" in table
    assert (out / "load.png").stat().st_size > 0
    # the generated data are removed at the end
    assert work.is_dir() and not any(work.iterdir())


def _load_run():
    spec = importlib.util.spec_from_file_location("benchmarks_load_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_benchmark_scales_down_to_the_free_disk():
    load_run = _load_run()
    lines: list[str] = []
    need = load_run.bytes_needed(1_000_000)
    assert load_run.fit_to_disk(1_000_000, 2 * need, lines.append) == 1_000_000 and not lines
    n = load_run.fit_to_disk(1_000_000, need // 4, lines.append)
    assert 0 < n < 1_000_000 and n % 1000 == 0 and load_run.bytes_needed(n) <= 0.9 * need // 4
    assert "running" in lines[0] and f"{n:,d}" in lines[0]


def test_load_benchmark_table_gives_the_ratios_between_sizes():
    load_run = _load_run()

    def row(n: int, requested: int, peak: float, seconds: float) -> dict:
        measured = {"seconds": seconds, "peak_rss_mib": peak, "rss_after_imports_mib": 300.0,
                    "sampled_peak_rss_mib": peak, "loadavg_1min_at_start": 1.0}
        return {"n": n, "requested": requested, "stack_gib": n * 4096 / 2**30, "star_mib": n / 5000,
                "particles_per_s": n / seconds, "predict": measured, "read_star": dict(measured)}

    rows = [row(10_000, 10_000, 400.0, 5.0), row(100_000, 100_000, 460.0, 50.0), row(900_000, 1_000_000, 900.0, 450.0)]
    text = load_run.table(rows, type("Args", (), {"batch": 256, "threads": None})())
    assert "RSS ratio N=100,000 / N=10,000 (10x the particles): 1.15x (meets the target < 1.2x)" in text
    assert "RSS ratio N=900,000 / N=100,000 (9x the particles): 1.96x (MISSES the target < 1.2x)" in text
    assert "N=1,000,000 was scaled down to 900,000" in text


def test_larger_box_holds_the_same_images_over_the_same_field_of_view():
    from relion_canon.preprocess.fourier import fourier_resample

    load_run = _load_run()
    images = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    big = load_run.upsampled(images, 64)
    assert big.shape == (3, 64, 64)
    # What the 32 px model does with 64 px particles gives the images back (the Nyquist row aside).
    back = fourier_resample(big, 32)
    inner = np.fft.fft2(back) - np.fft.fft2(images)
    inner[:, 16, :] = 0
    inner[:, :, 16] = 0
    assert np.abs(inner).max() < 1e-3 * np.abs(np.fft.fft2(images)).max()


def test_load_benchmark_at_64_px(tmp_path):
    config = TrainConfig(model="rotinv-ae", model_options={"width": 8, "max_width": 16, "critic_width": 8}, epochs=1,
                         batch_size=8, device="cpu", threads=1)
    model = train(REPO / "test_data/sim_tiny/particles.star", tmp_path / "model", config,
                  context=QUIET).model_path
    out = tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--sizes", "1000", "--threads", "1", "--model", str(model), "--box", "64",
           "--workdir", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["box"] == 64 and res["config"]["pixel_size"] == 1.25
    assert res["rows"][0]["stack_gib"] == 1000 * 64 * 64 * 4 / 2**30
