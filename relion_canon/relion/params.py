"""The RELION External job's params: which it takes (mode and gpu, beside every option of the job's one table,
:mod:`relion_canon.options`), how their text values parse, and the job configuration they ask for.

RELION passes each param as ``--<label> <value>``; an empty value means the default, booleans take yes/no, and
a label with an empty value means yes. A param also answers to its old labels (``outlier_method`` for
``outliers``), so that jobs saved before the labels were shortened still run. Bad values, and labels the job
does not know, raise :class:`UsageError` (one line naming the param as it was given; an unknown label with the
known ones).
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Sequence

from relion_canon.errors import InputError
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
    check_config,
    job_options,
    parse_model_options,
    range_problem,
)

PROG = "relion_canon_external"
MODES = ("train", "apply")
# Inputs RELION may pass that this job has no use for: accepted (so the job still runs) and named in run.out.
UNUSED_INPUTS = ("in_movies", "in_mics", "in_coords", "in_mask")  # in_3dref is the ref option

_TRUE = ("yes", "y", "true", "t", "1", "on")
_FALSE = ("no", "n", "false", "f", "0", "off")

# This front door's own params, beside the job's options: mode says whether model_path is used, gpu sets the
# device and how many training processes run.
MODE = JobOption("mode", (), Option(kind=TEXT, choices=MODES,
                                    help="train: train a model on these particles, then apply it; apply: apply "
                                         "the model given as model_path."), "train")
GPU = JobOption("gpu", (), Option(kind=TEXT, help="Empty: automatic (the GPU when there is one, honouring "
                                                  "CUDA_VISIBLE_DEVICES); 0: that GPU; 0,1: the whole job on "
                                                  "both, one process each, through torchrun; cpu: no GPU."), None)
THREADS = JobOption("j", (), Option(kind=INT, minimum=1, help="CPU threads (RELION's 'Number of threads')."), None)


class UsageError(InputError):
    """A bad argument or param value (one line, no traceback)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print usage and sys.exit(2): the job must instead end with an exit file.
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # A misspelt param label (--epoch for --epochs) fails with the labels this job knows, where argparse
        # would only say "unrecognized arguments".
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            raise UsageError(unknown_arguments_message(unknown))
        return known


def unknown_arguments_message(unknown: Sequence[str]) -> str:
    """One line: the arguments this job does not know, the nearest known label, and every known label."""
    entries = external_params()
    labels = [entry.external_param for entry in entries]
    # A misspelt old label (--outlier_metod) suggests the label the job shows now (--outliers).
    current = {label: entry.external_param for entry in entries for label in entry.external_labels}
    current.update((name, name) for name in ("o", "in_parts", "j", "relion_version"))
    first = next((a for a in unknown if a.startswith("-")), unknown[0])
    near = difflib.get_close_matches(first.lstrip("-"), list(current), n=1)
    hint = f" (did you mean --{current[near[0]]}?)" if near else ""
    return (f"unknown argument(s) {' '.join(unknown)}{hint}; the params this job knows: "
            f"{', '.join(labels)} (and RELION's --o, --in_parts, --j)")


def external_params() -> list[JobOption]:
    """Every param this job takes: mode, the job's options this front door offers (from the table), gpu.
    RELION's own arguments (--o, --in_parts, --j, ...) are not params."""
    from relion_canon.job import JobConfig

    return [MODE, *job_options(JobConfig, EXTERNAL), GPU]


def params_help() -> str:
    """The params, one paragraph each, as ``--help`` lists them."""
    import textwrap

    lines = ["Params (and Additional arguments):"]
    for entry in external_params():
        choices = entry.option.choice_names()
        default = "" if entry.default in (None, {}) else f" [default: {param_text(entry.default)}]"
        text = entry.option.help + (f" One of: {', '.join(choices)}." if choices else "") + default
        lines.append(f"  --{entry.external_param}")
        lines.extend(textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def param_text(value) -> str:
    """A value as a param's text (as RELION passes it, and as the job reads it back)."""
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
        # Each old label is its own argument, so that a message names the label the user wrote and a param
        # given under two labels is caught (param_text_given).
        for alias in entry.option.external_aliases:
            par.add_argument(f"--{alias}", **{**settings, "help": argparse.SUPPRESS})
    p.add_argument("-h", "--help", action="store_true")
    return p


# --- values -------------------------------------------------------------------------------------------------


def text_or_none(value: str | None) -> str | None:
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


def _number(name: str, value: str, kind: type) -> int | float:
    try:
        return kind(value)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise UsageError(f"param {name}: expected {expected}, got {value!r}") from None


def param_text_given(args: argparse.Namespace, entry: JobOption) -> tuple[str, str | list[str | None] | None]:
    """(the label it was given under, its text) for a param, which may come under its label or an old one;
    (its label, None) when it was not given. Given under two labels, it is refused: which one RELION
    passed last is not something a user can see in the GUI."""
    given = [(label, getattr(args, label)) for label in entry.external_labels
             if getattr(args, label) not in (None, [])]
    if len(given) > 1:
        both = " and ".join(f"--{label}" for label, _ in given)
        raise UsageError(f"param {entry.external_param} is given twice, as {both}: keep one")
    return given[0] if given else (entry.external_param, None)


def param_value(entry: JobOption, text: str | list[str | None] | None, label: str | None = None):
    """A param's value as RELION passes it (text; a list for a repeated ``--set``) → the option's value;
    an empty value gives the option's default. Messages name the param as ``label`` (the label it was given
    under; default: its label)."""
    name, opt = label or entry.external_param, entry.option
    if opt.kind == PAIRS:
        try:
            return parse_model_options(text or [])
        except ValueError as exc:
            raise UsageError(f"--{name}: {exc}") from None
    value = text_or_none(text)  # type: ignore[arg-type]
    if value is None:
        return entry.default
    if value.lower() in opt.none_words:
        return None
    if opt.kind == BOOL:
        return _bool(name, value)
    if opt.kind in (INT, FLOAT):
        parsed: object = _number(name, value, int if opt.kind == INT else float)
    elif opt.kind == RANGE:
        parsed = parse_defocus_range(value, name)
    else:
        try:
            parsed = opt.choose(value)
        except ValueError as exc:
            raise UsageError(f"param {name}: {exc}") from None
    problem = opt.problem(parsed)  # the table's rule, as every front door applies it
    if problem is not None:
        raise UsageError(f"param {name}: {problem}")
    return parsed


def parse_defocus_range(value: str | None, name: str | None = None) -> tuple[float, float] | None:
    """'5000,25000' (Å; also 5000:25000 or 5000-25000) → (5000.0, 25000.0); empty → None. Messages name the
    param as ``name`` (default: the defocus range's label)."""
    value = text_or_none(value)
    if value is None:
        return None
    if name is None:
        name = next(e.external_param for e in external_params() if e.name == "defocus_range")
    parts = [s for s in re.split(r"[,:;]|(?<=\d)-(?=\d)", value) if s.strip()]
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise UsageError(f"param {name}: expected min,max in Å (e.g. 5000,25000), got {value!r}") from None
    problem = range_problem((lo, hi))
    if problem is not None:
        raise UsageError(f"param {name}: {problem}")
    return lo, hi


def parse_gpu(value: str | None) -> list[str] | None:
    """GPU ids as RELION users write them ('0', '0,1', '0:1', '0 1'); [] = automatic; None = the CPU."""
    value = text_or_none(value)
    if value is None:
        return []
    if value.lower() == "cpu":
        return None
    ids = [s for s in re.split(r"[,:\s]+", value) if s]
    if not all(s.isdigit() for s in ids):
        raise UsageError(f"param gpu: expected GPU ids such as 0 or 0,1 (or cpu), got {value!r}")
    return ids


def config_from_args(args: argparse.Namespace):
    """The :class:`~relion_canon.job.JobConfig` the user's params ask for, and the GPU ids (None: CPU)."""
    from relion_canon.job import JobConfig
    from relion_canon.train.devices import device_from_gpu_ids

    values = {entry.name: param_value(entry, text, label)
              for entry in job_options(JobConfig, EXTERNAL)
              for label, text in [param_text_given(args, entry)]}
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
    config = build_config(JobConfig, values)
    check_config(config, EXTERNAL)
    return config, gpu_ids


