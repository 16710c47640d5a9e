"""What the benchmarks that compare relion_canon with RELION share: a simulated set laid out as a RELION project,
each program run as a measured child process (wall time, CPU seconds, peak RSS, load average), the External
job's command line and RELION 3.1's Class2D command line.

Imported by ``benchmarks/vs_relion/run.py`` and ``benchmarks/classify/run.py`` (each puts this folder on
``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def simulate_project(project: Path, config) -> None:
    """Simulate ``config`` (a :class:`~relion_canon.simulate.SimulationConfig`) into ``project/Input`` as a
    RELION project: a ``default_pipeline.star`` and image names relative to the project directory, as RELION
    reads them."""
    from relion_canon.simulate import simulate_dataset

    project.mkdir(parents=True, exist_ok=True)
    (project / "default_pipeline.star").write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n")
    with cwd(project):
        simulate_dataset(config, Path("Input"))


def external_command() -> list[str]:
    """The installed console script (as a RELION user runs it), else the same entry point through python -m."""
    script = Path(sys.executable).parent / "relion_canon_external"
    if script.exists():
        return [str(script)]
    found = shutil.which("relion_canon_external")
    return [found] if found else [sys.executable, "-m", "relion_canon.relion.external"]


def relion_class2d_command(star: str, out: str, classes: int, iterations: int, diameter_A: float,
                           threads: int) -> list[str]:
    """RELION 3.1 Class2D as the benchmarks run it (the seed only makes runs repeatable)."""
    return ["relion_refine", "--i", star, "--o", out, "--K", str(classes), "--iter", str(iterations),
            "--psi_step", "6", "--offset_range", "5", "--offset_step", "2", "--ctf", "--norm", "--scale",
            "--flatten_solvent", "--zero_mask", "--particle_diameter", str(round(diameter_A)), "--j", str(threads),
            "--random_seed", "0"]


def _vm_hwm(pid: int) -> int:
    """The kernel's high-water mark of a process's RSS (bytes) since its exec; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(cmd: list[str], cwd: Path, stdout: Path, stderr: Path, timeout: float) -> dict:
    """Run ``cmd``; wall time and peak RSS, sampled every 0.1 s: the larger of the summed RSS of its process
    tree (psutil) and the largest single process's high-water mark (``VmHWM``, which catches peaks between
    samples; unlike ``wait4``'s ``ru_maxrss`` it does not count the benchmark's own memory, which a forked
    child shares until it execs)."""
    import resource

    import psutil

    stdout.parent.mkdir(parents=True, exist_ok=True)
    sampled = hwm = 0
    loads = []
    # CPU seconds of the reaped process tree: unlike wall time, hardly changed by other jobs on the machine.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        proc = psutil.Popen(cmd, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        try:
            while proc.poll() is None:
                total = 0
                try:
                    procs = [proc, *proc.children(recursive=True)]
                except psutil.NoSuchProcess:
                    procs = []
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    hwm = max(hwm, _vm_hwm(p.pid))
                sampled = max(sampled, total)
                loads.append(os.getloadavg()[0])
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"{cmd[0]} ran past {timeout:.0f} s")
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                for p in [*proc.children(recursive=True), proc]:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                proc.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"returncode": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "load_average_mean": float(np.mean(loads)) if loads else None,
            "peak_rss_mb": max(sampled, hwm) / 2**20,
            "peak_rss_sampled_tree_mb": sampled / 2**20, "peak_rss_hwm_mb": hwm / 2**20}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def auc_or_none(labels: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` for ``labels`` (1 = positive); None when only one label is present or a score is
    not finite."""
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max() or not np.all(np.isfinite(score)):
        return None
    return float(roc_auc_score(labels, score))


def add_run_options(parser: argparse.ArgumentParser, out_default: Path) -> None:
    """The options every relion_canon-against-RELION benchmark takes: how the programs run and where the
    scratch projects and results go."""
    parser.add_argument("--epochs", type=int, default=None, help="relion_canon epochs (default: the job's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="per program run, seconds")
    parser.add_argument("--workdir", default=None, help="where the scratch projects go (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch projects")
    parser.add_argument("--out", default=str(out_default))
