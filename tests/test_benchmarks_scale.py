"""benchmarks/scale/run.py: the chunked particle sets it builds, and a smoke-sized run end to end.

Only the shape of the output is checked; speed and memory are never asserted in tests.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "scale" / "run.py"


def _scale_run():
    spec = importlib.util.spec_from_file_location("benchmarks_scale_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnImagePixelSize #2
1 4.0


# version 30001

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnDefocusU #3
{rows}
"""


def _chunk(path: Path, stack: str, n: int) -> Path:
    rows = "\n".join(f"{i + 1:06d}@{stack}\tMicrographs/mic{i // 2:06d}.mrc\t{1000.0 * i}" for i in range(n))
    path.write_text(STAR.format(rows=rows))
    return path


def test_chunks_are_joined_with_their_micrographs_kept_apart(tmp_path):
    from relion_canon.io.star import read_star

    scale = _scale_run()
    a = _chunk(tmp_path / "a.star", "chunks/c0000/particles.mrcs", 4)
    b = _chunk(tmp_path / "b.star", "chunks/c0001/particles.mrcs", 4)
    scale.concatenate_stars([a, b], tmp_path / "joined.star", 6, ["c0000", "c0001"])
    star = read_star(tmp_path / "joined.star")
    table = star.particles
    assert len(table) == 6 and len(star.optics_table) == 1
    assert list(table["rlnImageName"]) == [f"{i:06d}@chunks/c0000/particles.mrcs" for i in range(1, 5)] + [
        f"{i:06d}@chunks/c0001/particles.mrcs" for i in range(1, 3)]
    # mic000000 of either chunk is another micrograph
    assert table["rlnMicrographName"].nunique() == 3
    assert table["rlnMicrographName"].iloc[4] == "c0001/Micrographs/mic000000.mrc"
    assert table["rlnDefocusU"].iloc[5] == 1000.0


def test_asking_for_more_particles_than_the_chunks_hold_fails(tmp_path):
    scale = _scale_run()
    a = _chunk(tmp_path / "a.star", "s.mrcs", 3)
    with pytest.raises(RuntimeError, match="hold 3 particles, 5 asked for"):
        scale.concatenate_stars([a], tmp_path / "joined.star", 5, ["c0000"])
    assert not (tmp_path / "joined.star").exists()


def test_scale_benchmark_smoke(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--processes", "1,2", "--workdir", str(work),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["device"] == "cpu" and res["meta"]["threads"] == 1
    assert [(r["n"], r["processes"]) for r in res["rows"]] == [(300, 1), (300, 2)]
    for r in res["rows"]:
        assert r["particles_per_s"] == pytest.approx(r["n"] / r["wall_s"])
        # the I/O limit read every image once: 32 × 32 float32 each
        assert r["read_seconds"] > 0 and r["read_mb_per_s"] * r["read_seconds"] == pytest.approx(r["n"] * 4096 / 2**20)
        assert r["stage_seconds"]["total"] < r["wall_s"] and r["resources"]["peak_rss_mb"] > 0
        assert 0 <= r["scores"]["junk_auc"] <= 1
    table = (out / "table.txt").read_text()
    assert "I/O ratio" in table and "300" in table and "procs" in table
    assert (out / "scale.png").stat().st_size > 0
    # the generated data are removed at the end
    assert work.is_dir() and not any(work.iterdir())


def test_write_results_benchmark_smoke(tmp_path):
    """benchmarks/scale/write_results.py: both ways of writing the job's particle files, each in its own process,
    give files of the same size."""
    star = _chunk(tmp_path / "particles.star", "stack.mrcs", 40)
    cmd = [sys.executable, str(REPO / "benchmarks" / "scale" / "write_results.py"), "--i", str(star),
           "--scratch", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "40 particles (the same bytes both ways)" in proc.stdout
    assert "slices" in proc.stdout and "whole" in proc.stdout
