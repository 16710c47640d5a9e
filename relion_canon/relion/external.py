"""``relion_canon_external``: the whole relion_canon job as a RELION External job.

RELION runs it from the project directory as (RELION 3.1, 4.0 and 5.0 alike)::

    relion_canon_external --o External/job012/ --in_parts Select/job011/particles.star \\
        [--<param label> <value> ...] --j 4 <Additional arguments> --pipeline_control External/job012/

with stdout appended to ``run.out`` and stderr to ``run.err``. It writes only inside ``--o``:
``particles.star`` (every input column kept, the new ones appended), ``particles_selected.star``,
``particles_rejected.star``, ``logfile.pdf``, ``report.json``, ``model.pt`` (+ ``checkpoint.pt`` when it
trains), with classes the model STAR files a Select job takes them from (see
:mod:`~relion_canon.relion.class_model`), then ``RELION_OUTPUT_NODES.star`` typed for the running RELION
version, then exactly one of
``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` (the reason is the last line of ``run.err``) / ``_ABORTED``.
Whatever happens short of SIGKILL, one exit file is written: a job without one hangs ``relion_pipeliner``.
On failure or abort the results are undone first: the folder keeps what it held before, and ``checkpoint.pt``
(:mod:`relion_canon.io.output_dir`). A folder another job holds is refused on stderr with no exit file (it is
that job's); so is an input that is one of the outputs (``--in_parts`` naming this job's ``particles.star``).
RELION's abort request (``RELION_JOB_ABORT_NOW``, polled per training epoch and per prediction batch) and
SIGTERM / SIGINT / SIGHUP end it as Aborted; exit code 0 success, 1 failure, 2 aborted.

Params (GUI "Params" tab, label / value; an empty value means the default; booleans take yes/no, and a
label with an empty value means yes): ``mode`` (``train``, the default: train on these particles, then apply;
or ``apply``: apply the model given as ``model_path``), ``gpu`` (empty: automatic, honouring
CUDA_VISIBLE_DEVICES; ``0``; ``0,1``: torchrun; ``cpu``), and every option of the job's one table
(:mod:`relion_canon.options`, on the fields of ``JobConfig``) under its param name; ``--help`` lists them all
with their help and defaults. Any of them can also go into "Additional arguments" (``--seed 1``,
``--set KEY=VALUE``, repeatable), as can ``--relion_version`` (override the version read from ``job.star``).
An argument it does not know (a misspelt param label) fails the job at once, naming the labels it knows.

``relion_canon_external --install-gui-template [--relion_version V] [--force]``, run in the RELION project
folder, writes ``.gui_externaljob.star`` there: the settings RELION's GUI loads when External is selected
(see :mod:`~relion_canon.relion.gui_template`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.heap import restart_with_kept_heap
from relion_canon.io.atomic import atomic_path
from relion_canon.io.output_dir import FolderBusy, OutputFolder, output_folder, stack_files
from relion_canon.relion.exit_files import (
    ABORT_NOW,
    OUTPUT_NODES,
    ExitStatus,
    abort_requested,
    clear_stale_files,
    write_exit_file,
)
from relion_canon.relion import gui_template
from relion_canon.relion.class_model import selection_node
from relion_canon.relion.job_star import JOB_STAR, detect_relion_version, read_job_star
from relion_canon.relion.nodes import NodeKind, write_output_nodes
from relion_canon.relion.params import (
    PROG,
    UNUSED_INPUTS,
    UsageError,
    build_parser,
    config_from_args,
    params_help,
    text_or_none,
)
from relion_canon.relion.torchrun import distributed_job_command, run_torchrun

MODEL_FILE = "model.pt"
# What the job writes in its folder, checked against its inputs before any work (run_job adds its own names).
OUTPUTS = ("particles.star", "particles_selected.star", "particles_rejected.star", "logfile.pdf", "report.json",
           MODEL_FILE, OUTPUT_NODES)
DDP_SETTINGS = "distributed_job.json"  # the settings handed to the torchrun processes; removed after


class _Stop(BaseException):
    """The job must stop now and end as Aborted: RELION's abort request, or a termination signal.

    A BaseException, so that no ``except Exception`` on the way up swallows it.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# --- the job ------------------------------------------------------------------------------------------------


def _out_dir_from(argv: Sequence[str]) -> str | None:
    """``--o`` alone, read before anything else can fail: without it there is nowhere to write an exit file."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--o")
    try:
        known, _ = pre.parse_known_args(list(argv))
    except SystemExit:
        return None
    return text_or_none(known.o)


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
        self.folder: OutputFolder | None = None  # held from the start of _run until the exit file is written
        self.busy = False  # another job holds the folder: it is not ours to write in
        self._held = contextlib.ExitStack()

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
            try:
                self._finish()
            finally:
                self._held.close()  # the lock goes after the exit file
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
            self.busy = isinstance(exc, FolderBusy)
            _err(f"{PROG}: error: {exc}")
        else:
            self.status = ExitStatus.FAILURE
            _err("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
            _err(f"{PROG}: error: {type(exc).__name__}: {exc}")

    def _finish(self) -> None:
        if self.status is None:
            self.status = ExitStatus.ABORTED if self.signals.received is not None else ExitStatus.FAILURE
        if self.busy:
            return
        if self.folder is not None:
            # The results become the folder's whole set only on success; otherwise they are undone, before RELION
            # is told the job ended.
            self.folder.commit() if self.status is ExitStatus.SUCCESS else self.folder.rollback()
        try:
            write_exit_file(self.out, self.status)
        except OSError as exc:
            _err(f"{PROG}: could not write {self.status.value} in {self.out}: {exc}")
            raise
        _log(f"{PROG}: wrote {self.status.value}")

    def _run(self, argv: list[str]) -> None:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)  # kept whatever happens: the exit file goes there
        self.folder = self._held.enter_context(output_folder(self.out, outputs=OUTPUTS))
        removed = clear_stale_files(self.out)
        args = build_parser().parse_args(argv)
        version, source = detect_relion_version(self.out, ".", text_or_none(args.relion_version))
        _log(f"{PROG} {__version__}: {' '.join(argv)}")
        is_continue = self._is_continue()
        _log(f"RELION {version} (from {source}); {'continuing' if is_continue else 'new run'}; "
             f"working directory {os.getcwd()}")
        if removed:
            _log(f"Removed files of an earlier run: {', '.join(removed)}")
        for name in UNUSED_INPUTS:
            if getattr(args, name):
                _log(f"Warning: --{name} {getattr(args, name)} is not used: relion_canon learns from the particles alone")
        if not text_or_none(args.in_parts):
            raise UsageError("no input particles: fill in 'Input particles' on the Input tab (--in_parts)")
        if self.should_stop():
            raise _Stop(f"aborted on RELION's request ({ABORT_NOW}) before starting")

        # The particles first: a wrong input is the commonest failure, and this finds it before torch loads.
        star = self._read_particles(args.in_parts)
        config, gpu_ids = config_from_args(args)
        model_source = _model_file(config.model_path) if config.model_path else None
        _log("Settings: " + json.dumps(config.to_dict(), default=str))
        if gpu_ids and len(gpu_ids) > 1:
            report = self._run_distributed(star, args.in_parts, config, gpu_ids, is_continue)
        else:
            job = self._job
            if job is None:
                from relion_canon.job import run_job as job
            from relion_canon.context import RunContext
            from relion_canon.logs import log_to

            with log_to(sys.stdout):  # the job's lines in run.out, as _log writes its own
                result = job(star, self.out_dir, config, resume=is_continue,
                             context=RunContext(progress=False, should_stop=self.should_stop))
            report = getattr(result, "report", {})

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
        if report.get("class_model"):  # this run's, never a file an earlier run left
            nodes.append(selection_node(version))
        write_output_nodes(self.out, [((self.out / name).as_posix(), kind) for name, kind in nodes], version)
        n_sel = report.get("n_selected")
        _log(f"Done in {time.perf_counter() - t0:.1f} s: {', '.join(name for name, _ in nodes)}"
             + (f" ({n_sel} particles selected)" if n_sel is not None else ""))

    def _read_particles(self, in_parts: str):
        """The input particles, refused if the job's outputs would overwrite them or their stacks."""
        from relion_canon.io.star import read_star

        self.folder.protect([in_parts])  # type: ignore[union-attr]
        star = read_star(in_parts)
        self.folder.protect(stack_files(star))  # type: ignore[union-attr]
        return star

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

    def _run_distributed(self, star, in_parts: str, config, gpu_ids: list[str], resume: bool) -> dict:
        """The whole job in one torchrun process per GPU (:mod:`relion_canon.relion.ddp_job`), which share the
        training and every pass over the particles; rank 0 writes the results into this job's folder. Its
        report."""
        from relion_canon.io.validate import check_job_input
        from relion_canon.job import REPORT_JSON, result_names
        from relion_canon.logs import log_to
        from relion_canon.relion.ddp_job import write_settings

        # Before the processes start: a wrong input is one line here, not one traceback per process.
        with log_to(sys.stdout):  # its warnings in run.out, where run_job would have put them
            check_job_input(star, config)
        # The processes write outside this process's atomic_path: their results are this run's all the same, and
        # an earlier run's files of those names are set aside (back if this run fails).
        for name in result_names(config):
            self.folder.claim(name)  # type: ignore[union-attr]
        settings = write_settings(self.out / DDP_SETTINGS, in_parts, self.out_dir, config, resume)
        cmd = distributed_job_command(str(settings), len(gpu_ids))
        _log(f"Running on GPUs {','.join(gpu_ids)}, one process each: {' '.join(cmd)}")
        try:
            finished = run_torchrun(cmd, gpu_ids, self.should_stop)
        finally:
            settings.unlink(missing_ok=True)
        if not finished:
            raise _Stop(f"aborted on RELION's request ({ABORT_NOW}) while running on GPUs {','.join(gpu_ids)}; "
                        "Continue resumes training from the last completed epoch")
        report_path = self.out / REPORT_JSON
        return json.loads(report_path.read_text()) if report_path.exists() else {}


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
    if argv is None:
        restart_with_kept_heap()
    argv = list(sys.argv[1:] if argv is None else argv)
    if gui_template.INSTALL_FLAG in argv:
        return gui_template.main(argv)
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
