"""A scratch RELION project with simulated particles, and a stand-in for the job that tests the protocol alone."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

MINIMAL_PIPELINE = "data_pipeline_general\n\n_rlnPipeLineJobCounter                       1\n"


def make_project(root: Path, n: int = 24, box: int = 32, junk: float = 0.1, seed: int = 3) -> Path:
    """A RELION project in ``root``: a minimal ``default_pipeline.star`` and simulated particles in ``Input/``
    whose image names are project-relative (as an Import job leaves them)."""
    from relion_canon.simulate import SimulationConfig, simulate_dataset

    root.mkdir(parents=True, exist_ok=True)
    (root / "default_pipeline.star").write_text(MINIMAL_PIPELINE)
    cwd = os.getcwd()
    os.chdir(root)  # the simulator names images relative to the working directory, as RELION reads them
    try:
        simulate_dataset(SimulationConfig(n_particles=n, box=box, junk_fraction=junk, seed=seed), Path("Input"))
    finally:
        os.chdir(cwd)
    return root


def write_job_star(out_dir: Path, version: str = "3.1", is_continue: bool = False) -> Path:
    """A job.star as RELION ``version`` writes it for an External job (header and a few options)."""
    star_version = "50001" if version == "5.0" else "30001"
    if version == "3.1":
        head = "_rlnJobType                            99\n"
    else:
        head = "_rlnJobTypeLabel             relion.external\n"
    head += f"_rlnJobIsContinue                       {int(is_continue)}\n"
    if version != "3.1":
        head += "_rlnJobIsTomo                           0\n"
    text = (f"\n# version {star_version}\n\ndata_job\n\n{head} \n\n# version {star_version}\n\n"
            "data_joboptions_values\n\nloop_ \n_rlnJobOptionVariable #1 \n_rlnJobOptionValue #2 \n"
            "    fn_exe relion_canon_external \n   in_part Input/particles.star \n"
            "other_args  \"--gpu 0 --seed 2\" \nparam1_label       mode \nparam1_value      train \n"
            "param2_label         \"\" \nparam2_value         \"\" \n \n")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "job.star"
    path.write_text(text)
    return path


class FakeJob:
    """Stands in for ``relion_canon.job.run_job``: writes the job's outputs quickly, or misbehaves on
    purpose (``behaviour``): ``ok``, ``input_error``, ``crash``, ``abort`` (creates RELION's abort request
    itself, as the GUI would while the job runs, then polls ``context.should_stop`` like the engine does). It
    logs on the package's logger, as the job does, so its lines reach run.out through the job's handler."""

    def __init__(self, behaviour: str = "ok"):
        self.behaviour = behaviour
        self.calls: list[dict] = []

    def __call__(self, star, out_dir, config, *, resume, context, passthrough=None, input_checked=False):
        from relion_canon.errors import InputError
        from relion_canon.io.star import write_star

        log = logging.getLogger("relion_canon.job").info
        self.calls.append({"config": config, "resume": resume, "progress": context.progress, "out_dir": out_dir})
        out = Path(out_dir)
        if self.behaviour == "input_error":
            raise InputError("a value no job could use", star.path, 3)
        if self.behaviour == "crash":
            raise ZeroDivisionError("a bug deep inside the job")
        if self.behaviour == "abort":
            (out / "RELION_JOB_ABORT_NOW").touch()
            for epoch in range(100):
                log(f"epoch {epoch + 1}/100")
                if context.should_stop():
                    raise InterruptedError(f"stopped after epoch {epoch + 1}")
            raise AssertionError("should_stop never said yes")
        n = len(star)
        score = np.linspace(-1.0, 4.0, n)
        out_star = star.with_columns({"rlnAnglePsiPrior": np.zeros(n), "rlnParticleSelectZScore": score})
        write_star(out_star, out / "particles.star")
        write_star(out_star.subset(score <= config.outlier_threshold), out / "particles_selected.star")
        (out / "logfile.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        log("fake job done")
        return SimpleNamespace(report={"n_selected": int((score <= config.outlier_threshold).sum())})


def external_script() -> str:
    """The installed console script, by full path: its name must contain 'relion_' (RELION then appends
    --pipeline_control), and relion_pipeliner runs it through /bin/sh with the test's PATH."""
    candidate = Path(sys.executable).parent / "relion_canon_external"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("relion_canon_external")
    if found is None:
        raise RuntimeError("relion_canon_external is not installed: run `pip install -e .` first")
    return found


def snapshot(root: Path) -> dict[str, float]:
    """Every file under ``root`` with its modification time."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
