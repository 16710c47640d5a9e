"""``relion_canon_external``: the whole relion_canon job as a RELION External job.

RELION runs it from the project directory as (RELION 3.1, 4.0 and 5.0 alike)::

    relion_canon_external --o External/job012/ --in_parts Select/job011/particles.star \\
        [--<param label> <value> ...] --j 4 <Additional arguments> --pipeline_control External/job012/

with stdout appended to ``run.out`` and stderr to ``run.err``. It writes only inside ``--o``:
``particles.star`` (every input column kept, the new ones appended), ``particles_selected.star``,
``particles_rejected.star``, ``logfile.pdf``, ``report.json``, ``model.pt`` (+ ``checkpoint.pt`` when it
trains), then ``RELION_OUTPUT_NODES.star`` typed for the running RELION version, then exactly one of
``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` (the reason is the last line of ``run.err``) / ``_ABORTED``.
Whatever happens short of SIGKILL, one exit file is written: a job without one hangs ``relion_pipeliner``.
RELION's abort request (``RELION_JOB_ABORT_NOW``, polled per training epoch and per prediction batch) and
SIGTERM / SIGINT / SIGHUP end it as Aborted; exit code 0 success, 1 failure, 2 aborted.

Params (GUI "Params" tab, label / value; an empty value means the default; booleans take yes/no, and a
label with an empty value means yes):

========================  ==========================================================================
mode                      ``train`` (train on these particles, then apply; default) or ``apply``
model                     rotinv-ae (default), vaegan, spatial-vae
model_path                with mode apply: a model.pt (or the job folder holding it), project-relative
epochs                    training epochs (default: 1; the refinement sets the final accuracy)
box                       Fourier-crop the particles to this box (px) first
outlier_method            ensemble (default), iforest, lof, covariance
outlier_threshold         flag particles whose rlnParticleSelectZScore is above this (default: the job's)
defocus_range             Å, ``min,max``, for the defocus read-out (default: the input's defocus range)
per_class                 estimate per rlnClassNumber (default no)
labels                    learn psi from the input's rlnAnglePsi, e.g. after Class2D (default no)
gpu                       empty: automatic (honours CUDA_VISIBLE_DEVICES); ``0``; ``0,1`` (torchrun); ``cpu``
========================  ==========================================================================

and, for "Additional arguments": ``--refine``, ``--write_canonical``, ``--batch_size``, ``--seed``,
``--train_particles`` (train on a random subset of this many; ``all``), ``--model_box`` (the network's box),
``--max_shift_px`` (translational search of the refinement), ``--set KEY=VALUE`` (a model option,
repeatable), ``--relion_version`` (override the version read from ``job.star``). Unknown arguments are ignored with a warning in ``run.out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.relion.exit_files import (
    ABORT_NOW,
    ExitStatus,
    abort_requested,
    clear_stale_files,
    write_exit_file,
)
from relion_canon.relion.job_star import JOB_STAR, detect_relion_version, read_job_star
from relion_canon.relion.nodes import NodeKind, write_output_nodes

PROG = "relion_canon_external"
MODES = ("train", "apply")
OUTLIER_METHODS = ("ensemble", "iforest", "lof", "covariance")
MODEL_FILE = "model.pt"
DDP_SETTINGS = "distributed_training.json"  # the settings handed to the torchrun processes; removed after

# Inputs RELION may pass that this job has no use for: accepted (so the job still runs) and named in run.out.
UNUSED_INPUTS = ("in_movies", "in_mics", "in_coords", "in_3dref", "in_mask")

_TRUE = ("yes", "y", "true", "t", "1", "on")
_FALSE = ("no", "n", "false", "f", "0", "off")


class UsageError(InputError):
    """A bad argument or param value (one line, no traceback)."""


class _Stop(BaseException):
    """The job must stop now and end as Aborted: RELION's abort request, or a termination signal.

    A BaseException, so that no ``except Exception`` on the way up swallows it.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print usage and sys.exit(2): the job must instead end with an exit file.
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The arguments exactly as RELION passes them, plus this job's params.

    Every param takes an optional value (``nargs="?"``): RELION passes a labelled param with an empty value
    as a bare flag (``--epochs  --j 4``). ``allow_abbrev=False`` keeps a misspelt flag from silently
    matching a longer one (``--in_part`` is reported as unknown, not read as ``--in_parts``).
    """
    p = _Parser(prog=PROG, allow_abbrev=False, add_help=False,
                description="relion_canon as a RELION External job (see the module documentation).")
    io = p.add_argument_group("RELION")
    io.add_argument("--o", help="job folder, project-relative (External/jobNNN/)")
    io.add_argument("--in_parts", help="input particle STAR file")
    for name in UNUSED_INPUTS:
        io.add_argument(f"--{name}", help=argparse.SUPPRESS)
    io.add_argument("--j", help="CPU threads (RELION's 'Number of threads')")
    io.add_argument("--pipeline_control", help=argparse.SUPPRESS)
    io.add_argument("--relion_version", nargs="?", help="3.1, 4.0 or 5.0 (default: read from job.star)")
    par = p.add_argument_group("params")
    for name in ("mode", "model", "model_path", "epochs", "box", "outlier_method", "outlier_threshold",
                 "defocus_range", "gpu", "batch_size", "seed", "train_particles", "model_box", "max_shift_px"):
        par.add_argument(f"--{name}", nargs="?")
    for name in ("per_class", "labels", "refine", "write_canonical"):
        par.add_argument(f"--{name}", nargs="?", const="yes")
    par.add_argument("--set", action="append", nargs="?", default=[], metavar="KEY=VALUE")
    p.add_argument("-h", "--help", action="store_true")
    return p


# --- values -------------------------------------------------------------------------------------------------


def _text(value: str | None) -> str | None:
    """An empty param value means "the default"."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def _bool(name: str, value: str | None, default: bool) -> bool:
    value = _text(value)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"param {name}: expected yes or no, got {value!r}")


def _int(name: str, value: str | None, minimum: int) -> int | None:
    value = _text(value)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"param {name}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"param {name}: must be at least {minimum}, got {number}")
    return number


def _float(name: str, value: str | None) -> float | None:
    value = _text(value)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"param {name}: expected a number, got {value!r}") from None


def _choice(name: str, value: str | None, choices: Sequence[str], default: str) -> str:
    value = _text(value)
    if value is None:
        return default
    if value.lower() not in choices:
        raise UsageError(f"param {name}: {value!r} is not one of {', '.join(choices)}")
    return value.lower()


def parse_defocus_range(value: str | None) -> tuple[float, float] | None:
    """'5000,25000' (Å; also 5000:25000 or 5000-25000) → (5000.0, 25000.0); empty → None."""
    value = _text(value)
    if value is None:
        return None
    parts = [s for s in re.split(r"[,:;]|(?<=\d)-(?=\d)", value) if s.strip()]
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise UsageError(f"param defocus_range: expected min,max in Å (e.g. 5000,25000), got {value!r}") from None
    if not 0 < lo < hi:
        raise UsageError(f"param defocus_range: expected 0 < min < max, got {value!r}")
    if hi < 100:
        raise UsageError(f"param defocus_range is in Å, not µm: got {value!r} (e.g. 1 µm = 10000)")
    return lo, hi


def parse_gpu(value: str | None) -> list[str] | None:
    """GPU ids as RELION users write them ('0', '0,1', '0:1', '0 1'); [] = automatic; None = the CPU."""
    value = _text(value)
    if value is None:
        return []
    if value.lower() == "cpu":
        return None
    ids = [s for s in re.split(r"[,:\s]+", value) if s]
    if not all(s.isdigit() for s in ids):
        raise UsageError(f"param gpu: expected GPU ids such as 0 or 0,1 (or cpu), got {value!r}")
    return ids


def _model_options(pairs: Sequence[str | None]) -> dict:
    options: dict = {}
    for pair in pairs:
        pair = _text(pair)
        if pair is None:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set: expected KEY=VALUE, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value.strip()
    return options


def config_from_args(args: argparse.Namespace):
    """The :class:`~relion_canon.pipeline.JobConfig` the user's params ask for, and the GPU ids (None: CPU)."""
    from relion_canon.cli.train_cmd import _device_from_gpu
    from relion_canon.models import MODEL_CLASSES
    from relion_canon.pipeline import JobConfig

    defaults = JobConfig()
    mode = _choice("mode", args.mode, MODES, "train")
    model_path = _text(args.model_path)
    if mode == "apply" and model_path is None:
        raise UsageError("mode is apply but no model_path is given (a model.pt, or the job folder that holds it)")
    if mode == "train" and model_path is not None:
        raise UsageError(f"model_path is {model_path!r} but mode is train: set mode to apply to use that model, "
                         "or clear model_path to train a new one")
    gpu_ids = parse_gpu(args.gpu)
    if gpu_ids is None:
        device = "cpu"
    elif len(gpu_ids) == 1:
        device = _device_from_gpu(gpu_ids[0], "auto")
    else:
        device = "auto"  # several GPUs: each training process takes its own; see ExternalJob._train_distributed
    config = JobConfig(
        model=_choice("model", args.model, tuple(MODEL_CLASSES), defaults.model),
        model_path=model_path,
        epochs=_int("epochs", args.epochs, 1),
        box=_int("box", args.box, 8),
        labels=_bool("labels", args.labels, defaults.labels),
        refine=_bool("refine", args.refine, defaults.refine),
        outlier_method=_choice("outlier_method", args.outlier_method, OUTLIER_METHODS, defaults.outlier_method),
        outlier_threshold=(_float("outlier_threshold", args.outlier_threshold)
                           if _text(args.outlier_threshold) is not None else defaults.outlier_threshold),
        defocus_range=parse_defocus_range(args.defocus_range),
        per_class=_bool("per_class", args.per_class, defaults.per_class),
        write_canonical=_bool("write_canonical", args.write_canonical, defaults.write_canonical),
        device=device,
        threads=_int("j", args.j, 1),
        batch_size=_int("batch_size", args.batch_size, 1) or defaults.batch_size,
        seed=_int("seed", args.seed, 0) if _text(args.seed) is not None else defaults.seed,
        model_options=_model_options(args.set),
        **_speed_settings(args),
    )
    return config, gpu_ids


def _speed_settings(args: argparse.Namespace) -> dict:
    """The job's speed/accuracy knobs, passed on only when given, so that the job's own defaults apply."""
    settings: dict = {}
    if _text(args.train_particles) is not None:
        value = _text(args.train_particles)
        settings["train_particles"] = None if value.lower() == "all" else _int("train_particles", value, 10)
    if _text(args.model_box) is not None:
        settings["model_box"] = _int("model_box", args.model_box, 8)
    if _text(args.max_shift_px) is not None:
        shift = _float("max_shift_px", args.max_shift_px)
        if shift < 0:
            raise UsageError(f"param max_shift_px: must be >= 0, got {shift}")
        settings["max_shift_px"] = shift
    return settings


def distributed_train_command(settings_path: str, n_processes: int) -> list[str]:
    """torchrun, the standard launcher (as ``relion-canon train --gpu 0,1`` uses it), starting one
    :mod:`relion_canon.relion.ddp_train` process per GPU. A child, not ``exec``: this process must live on to
    predict and, whatever happens, to write the exit file."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}",
            "-m", "relion_canon.relion.ddp_train", settings_path]


# --- the job ------------------------------------------------------------------------------------------------


def _out_dir_from(argv: Sequence[str]) -> str | None:
    """``--o`` alone, read before anything else can fail: without it there is nowhere to write an exit file."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--o")
    try:
        known, _ = pre.parse_known_args(list(argv))
    except SystemExit:
        return None
    return _text(known.o)


class _Signals:
    """SIGTERM / SIGINT / SIGHUP → one :class:`_Stop` raised in the main thread, so the job unwinds (temporary
    files removed, a distributed child stopped) and still writes its exit file. The default action of these
    signals would end the process with no exit file at all."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.quiet = False  # set while the exit file is written: nothing may interrupt that
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (the job run from a thread, e.g. by a test harness)
            self._previous.clear()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.quiet or self.received is not None:
            return  # one stop is enough; a second signal must not interrupt the unwinding
        self.received = signum
        raise _Stop(f"stopped by signal {signal.Signals(signum).name}")


def _log(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ExternalJob:
    """One run of the External job in ``out_dir``; :meth:`run` always ends with exactly one exit file."""

    def __init__(self, out_dir: str, job: Callable | None = None):
        self.out_dir = out_dir
        self.out = Path(out_dir)
        self._job = job  # run_job, or a stand-in (tests exercise the protocol without training)
        self.signals = _Signals()
        self.status: ExitStatus | None = None
        self.stop_requested = False  # the job's should_stop said yes: whatever follows is the abort

    # The abort request is polled by the training engine (per epoch) and the prediction (per batch).
    def should_stop(self) -> bool:
        if abort_requested(self.out):
            self.stop_requested = True
        return self.stop_requested

    def run(self, argv: Sequence[str]) -> int:
        self.signals.install()
        try:
            try:
                self._run(list(argv))
                self.status = ExitStatus.SUCCESS
            except BaseException as exc:
                self._record(exc)
        except BaseException as exc:  # a signal arrived while the first error was being reported
            self._record(exc)
        finally:
            self.signals.quiet = True
            self._finish()
            self.signals.restore()
        assert self.status is not None
        return self.status.return_code

    def _record(self, exc: BaseException) -> None:
        if self.status is not None:
            return
        if isinstance(exc, _Stop):
            self.status = ExitStatus.ABORTED
            (_log if self.signals.received is None else _err)(f"{PROG}: {exc.reason}")
        elif self.stop_requested or abort_requested(self.out):
            # The engine's TrainingStopped / the prediction's InterruptedError after our should_stop said yes.
            self.status = ExitStatus.ABORTED
            _log(f"{PROG}: aborted on RELION's request ({ABORT_NOW}): {exc}")
        elif isinstance(exc, InputError):
            self.status = ExitStatus.FAILURE
            _err(f"{PROG}: error: {exc}")
        else:
            self.status = ExitStatus.FAILURE
            _err("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
            _err(f"{PROG}: error: {type(exc).__name__}: {exc}")

    def _finish(self) -> None:
        if self.status is None:
            self.status = ExitStatus.ABORTED if self.signals.received is not None else ExitStatus.FAILURE
        try:
            write_exit_file(self.out, self.status)
        except OSError as exc:
            _err(f"{PROG}: could not write {self.status.value} in {self.out}: {exc}")
            raise
        _log(f"{PROG}: wrote {self.status.value}")

    def _run(self, argv: list[str]) -> None:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        removed = clear_stale_files(self.out)
        args, unknown = build_parser().parse_known_args(argv)
        version, source = detect_relion_version(self.out, ".", _text(args.relion_version))
        _log(f"{PROG} {__version__}: {' '.join(argv)}")
        is_continue = self._is_continue()
        _log(f"RELION {version} (from {source}); {'continuing' if is_continue else 'new run'}; "
             f"working directory {os.getcwd()}")
        if removed:
            _log(f"Removed files of an earlier run: {', '.join(removed)}")
        if unknown:
            _log(f"Warning: ignoring argument(s) this job does not know: {' '.join(unknown)}")
        for name in UNUSED_INPUTS:
            if getattr(args, name):
                _log(f"Warning: --{name} {getattr(args, name)} is not used: relion_canon learns from the particles alone")
        if not _text(args.in_parts):
            raise UsageError("no input particles: fill in 'Input particles' on the Input tab (--in_parts)")
        if self.should_stop():
            raise _Stop(f"aborted on RELION's request ({ABORT_NOW}) before starting")

        from relion_canon.io.star import read_star

        # The particles first: a wrong input is the commonest failure, and this finds it before torch loads.
        star = read_star(args.in_parts)
        config, gpu_ids = config_from_args(args)
        model_source = _model_file(config.model_path) if config.model_path else None
        _log("Settings: " + json.dumps(config.to_dict(), default=str))
        if gpu_ids and len(gpu_ids) > 1 and model_source is None:
            self._train_distributed(args.in_parts, config, gpu_ids, is_continue)
            is_continue = True  # the job now resumes from the checkpoint the distributed run left
            config.device = _single_device_after(gpu_ids)

        job = self._job
        if job is None:
            from relion_canon.pipeline import run_job as job
        result = job(star, self.out_dir, config, resume=is_continue, log=_log, progress=False,
                     should_stop=self.should_stop, project_dir=None)

        if model_source is not None:
            _copy_model(model_source, self.out / MODEL_FILE)
        if self.should_stop():
            raise _Stop(f"aborted on RELION's request ({ABORT_NOW}) as the job finished")
        if not (self.out / "particles.star").exists():
            raise RuntimeError(f"the job ended without writing {self.out / 'particles.star'}")
        nodes = [(name, kind) for name, kind in (("particles.star", NodeKind.PARTICLES),
                                                 ("particles_selected.star", NodeKind.PARTICLES),
                                                 ("logfile.pdf", NodeKind.LOGFILE))
                 if (self.out / name).exists()]
        write_output_nodes(self.out, [((self.out / name).as_posix(), kind) for name, kind in nodes], version)
        n_sel = result.report.get("n_selected") if hasattr(result, "report") else None
        _log(f"Done in {time.perf_counter() - t0:.1f} s: {', '.join(name for name, _ in nodes)}"
             + (f" ({n_sel} particles selected)" if n_sel is not None else ""))

    def _is_continue(self) -> bool:
        """RELION's "Continue!" (``_rlnJobIsContinue 1``) resumes from the checkpoint; a new run starts afresh.
        Without a readable job.star (the job run by hand) a checkpoint in the folder is resumed, as
        ``relion-canon train`` does."""
        job_star = self.out / JOB_STAR
        if not job_star.exists():
            return True
        try:
            return read_job_star(job_star).is_continue
        except InputError as exc:
            _log(f"Warning: {exc}; resuming from a checkpoint if the folder holds one")
            return True

    def _train_distributed(self, in_parts: str, config, gpu_ids: list[str], resume: bool) -> None:
        from relion_canon.relion.ddp_train import write_settings

        settings = write_settings(self.out / DDP_SETTINGS, in_parts, self.out_dir, config, resume)
        cmd = distributed_train_command(str(settings), len(gpu_ids))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpu_ids))
        _log(f"Training on GPUs {','.join(gpu_ids)}, one process each: {' '.join(cmd)}")
        # Its own session, so that the whole torchrun tree can be stopped at once.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if self.should_stop():
                        raise _Stop(f"aborted on RELION's request ({ABORT_NOW}) during training; "
                                    "Continue resumes from the last completed epoch") from None
            if rc != 0:
                raise RuntimeError(f"distributed training exited with code {rc} (its messages are above in run.err)")
        finally:
            if proc.poll() is None:
                _stop_process_group(proc)
            settings.unlink(missing_ok=True)


def _single_device_after(gpu_ids: list[str]) -> str:
    """Prediction after distributed training runs in this process, on the first of the GPUs."""
    import torch

    return f"cuda:{int(gpu_ids[0])}" if torch.cuda.is_available() else "auto"


def _stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _model_file(path: str) -> Path:
    """The model.pt a model_path names (a file, or a training folder that holds model.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise UsageError(f"param model_path: no model file at {p} (give a model.pt or the job folder holding it)")
    return p


def _copy_model(source: Path, target: Path) -> None:
    """The applied model goes into the job folder too, so the folder says which model made its results."""
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns 0 (success), 1 (failure) or 2 (aborted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    # Line-buffered: RELION's GUI shows run.out while the job runs.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    out_dir = _out_dir_from(argv)
    if out_dir is None:
        _err(f"{PROG}: error: no --o (the job folder): RELION always passes it; nothing was written")
        return ExitStatus.FAILURE.return_code
    return ExternalJob(out_dir).run(argv)


if __name__ == "__main__":
    sys.exit(main())
