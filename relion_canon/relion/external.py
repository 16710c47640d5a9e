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
label with an empty value means yes): ``mode`` (``train``, the default: train on these particles, then apply;
or ``apply``: apply the model given as ``model_path``), ``gpu`` (empty: automatic, honouring
CUDA_VISIBLE_DEVICES; ``0``; ``0,1``: torchrun; ``cpu``), and every option of the job's one table
(:mod:`relion_canon.options`, on the fields of ``JobConfig``) under its param name; ``--help`` lists them all
with their help and defaults. Any of them can also go into "Additional arguments" (``--seed 1``,
``--set KEY=VALUE``, repeatable), as can ``--relion_version`` (override the version read from ``job.star``).
Unknown arguments are ignored with a warning in ``run.out``.
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
from relion_canon.options import (
    BOOL,
    EXTERNAL,
    FLOAT,
    INT,
    PAIRS,
    RANGE,
    TEXT,
    JobOption,
    Option,
    build_config,
    job_options,
    parse_model_options,
)
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
MODEL_FILE = "model.pt"
DDP_SETTINGS = "distributed_training.json"  # the settings handed to the torchrun processes; removed after

# Inputs RELION may pass that this job has no use for: accepted (so the job still runs) and named in run.out.
UNUSED_INPUTS = ("in_movies", "in_mics", "in_coords", "in_3dref", "in_mask")

_TRUE = ("yes", "y", "true", "t", "1", "on")
_FALSE = ("no", "n", "false", "f", "0", "off")

# This front door's own params, beside the job's options: mode says whether model_path is used, gpu sets the
# device and how many training processes run.
MODE = JobOption("mode", (), Option(kind=TEXT, choices=MODES,
                                    help="train: train a model on these particles, then apply it; apply: apply "
                                         "the model given as model_path."), "train")
GPU = JobOption("gpu", (), Option(kind=TEXT, help="Empty: automatic (the GPU when there is one, honouring "
                                                  "CUDA_VISIBLE_DEVICES); 0: that GPU; 0,1: train on both, one "
                                                  "process each, through torchrun; cpu: no GPU."), None)
THREADS = JobOption("j", (), Option(kind=INT, minimum=1, help="CPU threads (RELION's 'Number of threads')."), None)


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


def external_params() -> list[JobOption]:
    """Every param this job takes: mode, the job's options this front door offers (from the table), gpu.
    RELION's own arguments (--o, --in_parts, --j, ...) are not params."""
    from relion_canon.pipeline import JobConfig

    return [MODE, *job_options(JobConfig, EXTERNAL), GPU]


def params_help() -> str:
    """The params, one paragraph each, as ``--help`` lists them."""
    import textwrap

    lines = ["Params (and Additional arguments):"]
    for entry in external_params():
        choices = entry.option.choice_names()
        default = "" if entry.default in (None, {}) else f" [default: {_param_text(entry.default)}]"
        text = entry.option.help + (f" One of: {', '.join(choices)}." if choices else "") + default
        lines.append(f"  --{entry.external_param}")
        lines.extend(textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


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
    io.add_argument("--j", help=THREADS.option.help)
    io.add_argument("--pipeline_control", help=argparse.SUPPRESS)
    io.add_argument("--relion_version", nargs="?", help="3.1, 4.0 or 5.0 (default: read from job.star)")
    par = p.add_argument_group("params")
    for entry in external_params():
        settings: dict = {"nargs": "?", "help": entry.option.help}
        if entry.option.kind == BOOL:
            settings["const"] = "yes"
        elif entry.option.kind == PAIRS:
            settings.update(action="append", default=[], metavar="KEY=VALUE")
        par.add_argument(f"--{entry.external_param}", **settings)
    p.add_argument("-h", "--help", action="store_true")
    return p


# --- values -------------------------------------------------------------------------------------------------


def _text(value: str | None) -> str | None:
    """An empty param value means "the default"."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def _bool(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"param {name}: expected yes or no, got {value!r}")


def _number(name: str, value: str, kind: type, minimum: float | None) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise UsageError(f"param {name}: expected {expected}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise UsageError(f"param {name}: must be at least {minimum}, got {number}")
    return number


def param_value(entry: JobOption, text: str | list[str | None] | None):
    """A param's value as RELION passes it (text; a list for a repeated ``--set``) → the option's value;
    an empty value gives the option's default."""
    name, opt = entry.external_param, entry.option
    if opt.kind == PAIRS:
        try:
            return parse_model_options(text or [])
        except ValueError as exc:
            raise UsageError(f"--{name}: {exc}") from None
    value = _text(text)  # type: ignore[arg-type]
    if value is None:
        return entry.default
    if value.lower() in opt.none_words:
        return None
    if opt.kind == BOOL:
        return _bool(name, value)
    if opt.kind in (INT, FLOAT):
        return _number(name, value, int if opt.kind == INT else float, opt.minimum)
    if opt.kind == RANGE:
        return parse_defocus_range(value)
    try:
        return opt.choose(value)
    except ValueError as exc:
        raise UsageError(f"param {name}: {exc}") from None


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


def config_from_args(args: argparse.Namespace):
    """The :class:`~relion_canon.pipeline.JobConfig` the user's params ask for, and the GPU ids (None: CPU)."""
    from relion_canon.pipeline import JobConfig
    from relion_canon.train.engine import device_from_gpu_ids

    values = {entry.name: param_value(entry, getattr(args, entry.external_param))
              for entry in job_options(JobConfig, EXTERNAL)}
    mode = param_value(MODE, args.mode)
    model_path = values["model_path"]
    if mode == "apply" and model_path is None:
        raise UsageError("mode is apply but no model_path is given (a model.pt, or the job folder that holds it)")
    if mode == "train" and model_path is not None:
        raise UsageError(f"model_path is {model_path!r} but mode is train: set mode to apply to use that model, "
                         "or clear model_path to train a new one")
    gpu_ids = parse_gpu(args.gpu)
    if gpu_ids is None:
        values["device"] = "cpu"
    elif len(gpu_ids) == 1:
        values["device"] = device_from_gpu_ids(gpu_ids[0], "auto")
    else:
        # Several GPUs: each training process takes its own; see ExternalJob._train_distributed.
        values["device"] = "auto"
    values["threads"] = param_value(THREADS, args.j)
    return build_config(JobConfig, values), gpu_ids


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
        from relion_canon.context import RunContext
        from relion_canon.logs import log_to

        with log_to(sys.stdout):  # the job's lines in run.out, as _log writes its own
            result = job(star, self.out_dir, config, resume=is_continue,
                         context=RunContext(progress=False, should_stop=self.should_stop))

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
        print(params_help())
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
