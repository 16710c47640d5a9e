"""The whole job: train (or load) a model, derive every estimate, write the output folder. ``relion-canon run``
and ``demo``, the RELION External job and the cryoSPARC job all call :func:`run_job`.

particles → (train a model, or load one) → predict → per-particle estimates → output folder:

* ``model.pt`` / ``checkpoint.pt`` (when training; ``checkpoint.pt`` lets a continued job resume),
* ``particles.star``: every input block, column and row, plus the new columns,
* ``particles_selected.star`` / ``particles_rejected.star``: the same split by the outlier flag,
* ``run_it000_model.star`` / ``_data.star`` / ``_optimiser.star`` when the particles have classes with a class
  average each: RELION's Select job takes the classes from them as from a Class2D (``report.json``'s
  ``class_model`` names them; see :mod:`relion_canon.relion.class_model`),
* ``report.json``: what was done and found (threshold, symmetry, timings),
* ``logfile.pdf`` and PNGs: the figures.

Paths inside ``out_dir`` are written as given, so a job run from a RELION project directory with
``out_dir="External/job012/"`` writes project-relative names.

The folder is held with :func:`~relion_canon.io.output_dir.output_folder`: one job at a time, no output onto an
input, and the result set whole or not at all (a failed job leaves the earlier results, or nothing, and
``checkpoint.pt`` to resume from).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.context import RunContext
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.output_dir import OutputFolder, output_folder, stack_files
from relion_canon.io.particles import RESULT_GROUPS, is_cryosparc, read_particles, write_results_cs
from relion_canon.io.result_stars import write_result_stars
from relion_canon.io.star import ParticleStar
from relion_canon.io.validate import check_job_input
from relion_canon.options import BOOL, EXTERNAL, INT, PAIRS, PATH, TEXT, option
from relion_canon.relion.class_model import (
    DATA_STAR,
    MODEL_STAR,
    OPTIMISER_STAR,
    PADDED_STACK,
    has_class_model,
    write_class_model,
)
from relion_canon.resources import resources_used
from relion_canon.threads import cpu_threads

log = logging.getLogger(__name__)

PARTICLES_STAR = "particles.star"
SELECTED_STAR = "particles_selected.star"
REJECTED_STAR = "particles_rejected.star"
REPORT_JSON = "report.json"
LOGFILE_PDF = "logfile.pdf"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
# Results only some runs make: an earlier run's are removed when this one does not make them, so that the
# folder never mixes two runs. (Figures are report.py's: it removes the ones it does not redraw.)
OPTIONAL_RESULTS = (MODEL_STAR, DATA_STAR, OPTIMISER_STAR, PADDED_STACK, "class_averages.mrcs", "canonical.mrcs",
                    *(f"{stem}{suffix}" for stem, *_ in RESULT_GROUPS for suffix in (".cs", ".csg")))
DEFAULT_EPOCHS = 1
# rotinv-ae as the job trains it by default: narrower, no Wasserstein critic (at SNR ≤ 0.1 it mostly rewards
# noise texture), one pass at prediction. Paper A's full model stays available through --model-option.
FAST_ROTINV_AE = {"width": 16, "max_width": 128, "lambda_adv": 0.0, "predict_rotations": 1}


def _model_names() -> tuple[str, ...]:
    from relion_canon.models import MODEL_CLASSES  # imports torch: only when a front door lists the choices

    return tuple(MODEL_CLASSES)


_NO_THREADS_PARAM = "RELION's own --j (Running tab: Number of threads) sets it"


@dataclass
class JobConfig(EstimateConfig):
    """Everything a user can choose for one job; the defaults are what pressing Run gives. The analysis
    stage's options are inherited from :class:`~relion_canon.analysis.estimate_config.EstimateConfig`.

    Each field's :func:`~relion_canon.options.option` is how the front doors (``relion-canon run``, the RELION
    External job, ``relion-canon cryosparc-job``) offer it: see :mod:`relion_canon.options`.
    """

    model: str = option("rotinv-ae", kind=TEXT, choices=_model_names, help="The network to train.")
    model_path: str | None = option(
        None, kind=PATH, help="Apply this trained model (model.pt or its folder) instead of training one.")
    epochs: int = option(DEFAULT_EPOCHS, kind=INT, minimum=1,
                         help="Training epochs (the refinement, not the network, sets the final accuracy).")
    train_particles: int | None = option(
        500, kind=INT, minimum=10, none_words=("all", "0"), external_param="train_parts",
        external_aliases=("train_particles",),
        help="Train on a random subset of this many particles (0 or all: every particle).")
    # None: the network sees the working box
    model_box: int | None = option(
        32, kind=INT, minimum=8,
        help="The box (px) the network trains at, Fourier-cropped (never larger than the working box).")
    labels: bool = option(
        False, kind=BOOL, cli_flag="--labels/--no-labels",
        help="Learn psi from the input's own angles (rlnAnglePsi, or cryoSPARC's poses), e.g. after Class2D.")
    threads: int | None = option(None, kind=INT, minimum=1, cli_flag="--j", not_in={EXTERNAL: _NO_THREADS_PARAM},
                                 help="CPU threads.")
    batch_size: int = option(64, kind=INT, minimum=1, help="Training batch size.")
    # The network only seeds the refinement with angles and gives a latent, so the job's default network is
    # small and trains fast; options given here are added to (and override) these for rotinv-ae.
    model_options: dict[str, Any] = option(
        kind=PAIRS, default_factory=dict, cli_flag="--set", external_param="set",
        help="A model option as KEY=VALUE, e.g. latent_dim=8 (repeatable).")


@dataclass
class JobResult:
    out_dir: Path
    particles_star: Path
    selected_star: Path
    rejected_star: Path
    model_path: Path
    report: dict[str, Any]
    figures: list[Path]

    @property
    def logfile(self) -> Path:
        return self.out_dir / LOGFILE_PDF


def run_job(
    particles: str | Path | ParticleStar,
    out_dir: str | Path,
    config: JobConfig = JobConfig(),
    *,
    resume: bool = True,
    context: RunContext = RunContext(),
    passthrough: str | Path | None = None,
    input_checked: bool = False,
    folder_held: bool = False,
) -> JobResult | None:
    """Run the whole job on a particle STAR file; see the module docstring for what lands in ``out_dir``.

    ``context.should_stop`` is polled once per training epoch, per prediction batch and per refinement round;
    when it returns True the job raises :class:`~relion_canon.train.engine.TrainingStopped` or
    ``InterruptedError`` with the outputs of earlier runs untouched. With ``resume`` a ``checkpoint.pt`` already
    in ``out_dir`` is continued. Progress lines go to this module's logger (see :mod:`relion_canon.logs`).

    ``particles`` may also be a cryoSPARC particles ``.cs`` (with its ``passthrough`` ``.cs``;
    ``context.project_dir`` is then the cryoSPARC project directory): the results are then also written as
    ``particles.cs``, ``particles_selected.cs`` and ``particles_rejected.cs`` with their ``.csg`` for
    "Import Result Group".

    ``config.threads`` bounds every CPU thread pool of the job (torch's and the BLAS behind numpy/scikit-learn).

    ``input_checked``: the caller has already passed these particles and this config through
    :func:`~relion_canon.io.validate.check_job_input` (the External job does, before it starts its torchrun
    processes), so the stacks are not read a second time nor the warnings repeated.

    Under torchrun (``relion-canon run --gpu 0,1``, or ``torchrun --nproc_per_node K -m relion_canon.cli.main
    run ...``) every process runs this: they train together (DistributedDataParallel), and each predicts,
    searches and fits its share of the particles in every pass (:mod:`relion_canon.parallel`). Rank 0 alone
    holds the folder, derives the rest and writes the results; the others return None once the passes are done.
    ``folder_held``: the process that started torchrun holds the folder and has claimed every name of
    :func:`result_names` in it (the External job does), so rank 0 writes without taking it again.
    """
    writer = _join_processes()
    if not input_checked:
        check_job_input(particles, config, passthrough, context.project_dir)  # options and data, before any work
    outputs = [PARTICLES_STAR, SELECTED_STAR, REJECTED_STAR, REPORT_JSON, LOGFILE_PDF]
    if not config.model_path:
        outputs += [MODEL_FILE, CHECKPOINT_FILE]
    inputs = [passthrough, _model_file(config.model_path) if config.model_path else None]
    if not isinstance(particles, ParticleStar):
        inputs.append(particles)
    if not writer or folder_held:
        with cpu_threads(config.threads):
            return _run_job(particles, Path(out_dir), config, resume, context, passthrough, None)
    with cpu_threads(config.threads), output_folder(out_dir, inputs=inputs, outputs=outputs) as folder:
        return _run_job(particles, Path(out_dir), config, resume, context, passthrough, folder)


def result_names(config: JobConfig) -> list[str]:
    """Every file a job with ``config`` may write in its folder (checkpoint.pt, resume state, aside)."""
    from relion_canon.analysis.report import JOB_FIGURES

    return [PARTICLES_STAR, SELECTED_STAR, REJECTED_STAR, REPORT_JSON, LOGFILE_PDF,
            *(() if config.model_path else (MODEL_FILE,)), *OPTIONAL_RESULTS, *(f"{stem}.png" for stem in JOB_FIGURES)]


def _join_processes() -> bool:
    """Join the other processes under torchrun (a no-op without); whether this process writes the results."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    from relion_canon.parallel import is_writer
    from relion_canon.train.devices import distributed

    distributed()
    return is_writer()


def _model_file(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path / MODEL_FILE if path.is_dir() else path


def _run_job(particles: str | Path | ParticleStar, out_dir: Path, config: JobConfig, resume: bool,
             context: RunContext, passthrough: str | Path | None, folder: OutputFolder | None) -> JobResult | None:
    """The job; ``folder`` None where this process does not hold it (under torchrun). A process that does not
    write the results returns None once its share of the passes is done."""
    from relion_canon.analysis.estimate import estimate
    from relion_canon.analysis.report import write_figures  # matplotlib: only when a job runs

    t_start = time.perf_counter()
    star = read_particles(particles, passthrough, context.project_dir)
    if folder is not None:
        folder.protect(stack_files(star, context.project_dir))
    if len(star) < 10:
        raise InputError(f"{len(star)} particles: the job needs at least 10 to learn from", star.path)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_path, history = train_for_job(star, out_dir, config, resume=resume, context=context)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    estimates = estimate(star, model_path, out_dir, config, context=context)
    timings["estimate"] = time.perf_counter() - t0
    if estimates is None:
        return None  # a process under torchrun that does not write: its share of the passes is done

    flag = estimates.columns["rlnCanonIsOutlier"].astype(bool)
    paths, class_model = _write_particles(star, estimates, particles, passthrough, out_dir)
    timings.update(estimates.report.pop("seconds", {}))
    report = {
        "input": str(star.path) if star.path else None,
        "n_particles": len(star),
        "n_selected": int((~flag).sum()),
        "n_rejected": int(flag.sum()),
        "config": config.to_dict(),
        "model_path": str(model_path),
        "seconds": timings,
        "training_history": history,
        **estimates.report,
        **({"class_model": class_model} if class_model else {}),
    }
    if folder is not None:  # else the process that holds it has claimed every result name
        _set_aside_earlier_results(folder, config)
    t0 = time.perf_counter()
    figures = write_figures(out_dir, estimates, history)
    timings["figures"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    report["resources"] = resources_used(config.device)
    with atomic_path(out_dir / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    log.info(f"Wrote {paths['particles']} ({len(star)} particles), {paths['selected']} ({report['n_selected']}), "
             f"{paths['rejected']} ({report['n_rejected']}); {timings['total']:.1f} s in all")
    return JobResult(out_dir, paths["particles"], paths["selected"], paths["rejected"], model_path, report, figures)


def _write_particles(star: ParticleStar, estimates: Any, particles: str | Path | ParticleStar,
                     passthrough: str | Path | None, out_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """particles.star, its selected and rejected parts (a slice of rows at a time: the table is not copied
    whole), the class model files (when every class has an average) and, for a cryoSPARC input, the .cs
    results; the STAR files' paths and the class model's."""
    columns = estimates.columns
    flag = columns["rlnCanonIsOutlier"].astype(bool)
    paths = {"particles": out_dir / PARTICLES_STAR, "selected": out_dir / SELECTED_STAR,
             "rejected": out_dir / REJECTED_STAR}
    write_result_stars(star, columns, ~flag, paths["particles"], paths["selected"], paths["rejected"])
    numbers = columns.get("rlnClassNumber")
    if numbers is None and "rlnClassNumber" in star.particles.columns:
        numbers = star.particles["rlnClassNumber"].to_numpy()
    class_model = (write_class_model(numbers, paths["particles"], out_dir, estimates.report)
                   if has_class_model(numbers, estimates.report) else {})
    if not isinstance(particles, ParticleStar) and is_cryosparc(particles):
        written = write_results_cs(particles, passthrough, star.with_columns(columns), out_dir)
        log.info(f"Wrote cryoSPARC results: {', '.join(str(p) for p in written)}")
    return paths, class_model


def _set_aside_earlier_results(folder: OutputFolder, config: JobConfig) -> None:
    """An earlier run's results that this run did not write (an applied model in the folder is an input: kept),
    and its figures: set aside through the folder, so that a failure puts them back (write_figures deletes the
    ones it does not redraw)."""
    from relion_canon.analysis.report import JOB_FIGURES

    for name in (*OPTIONAL_RESULTS, *((MODEL_FILE,) if config.model_path else ()), *(f"{s}.png" for s in JOB_FIGURES)):
        folder.remove(name)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def train_for_job(star: ParticleStar, out_dir: Path, config: JobConfig, *, resume: bool = True,
                  context: RunContext = RunContext()) -> tuple[Path, list[dict]]:
    """The trained model to apply: the user's, or one trained here on these particles."""
    from relion_canon.preprocess import PreprocessConfig
    from relion_canon.train.checkpoint import save_model_from_checkpoint
    from relion_canon.train.engine import TrainConfig, train

    if config.model_path:
        path = Path(config.model_path)
        log.info(f"Applying the existing model {path}")
        return path, []
    options = {**(FAST_ROTINV_AE if config.model == "rotinv-ae" else {}), **config.model_options}
    if config.labels:
        options["angle_mode"] = "labels"
    subset = star
    if config.train_particles is not None and len(star) > config.train_particles:
        # The network only has to give each particle a starting angle and a latent; it learns those from a
        # subset as well as from all, so training cost stays flat as the data grow.
        rows = np.sort(np.random.default_rng(config.seed).choice(len(star), config.train_particles, replace=False))
        subset = star.subset(rows)
        log.info(f"Training on a random subset of {config.train_particles} of the {len(star)} particles")
    train_config = TrainConfig(
        model=config.model,
        model_options=options,
        preprocess=PreprocessConfig(box=_model_box(star, config, context)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        threads=config.threads,
    )
    result = train(subset, out_dir, train_config, resume=resume, context=context)
    if result.epochs_run == 0:
        from relion_canon.parallel import barrier, is_writer

        # Resumed from a finished checkpoint: the model file is the checkpoint's (one an interrupted run wrote was
        # removed with its other partial results). Under torchrun rank 0 writes it and the others wait for it.
        if is_writer():
            save_model_from_checkpoint(out_dir / CHECKPOINT_FILE, result.model_path)
        barrier()
    return result.model_path, result.history


def _model_box(star: ParticleStar, config: JobConfig, context: RunContext) -> int | None:
    """The box the network trains at: ``model_box``, but never larger than the working box or the input."""
    from relion_canon.io.source import ParticleSource

    sizes = [b for b in (config.model_box, config.box) if b]
    if not sizes:
        return None
    box = min(sizes)
    if "rlnImageSize" in (star.optics_table.columns if star.optics_table is not None else []):
        input_box = int(star.optics_table["rlnImageSize"].max())
    else:
        # One particle's stack tells the box; opening a source for all of them would parse every stack header.
        input_box = ParticleSource.from_star(star.subset(np.arange(1)), context.project_dir).box or box
    return box if box < input_box else None
