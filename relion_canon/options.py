"""The job's options, declared once on the fields of :class:`~relion_canon.job.JobConfig`.

Each user-facing field carries an :class:`Option` in its ``dataclasses.field`` metadata (made with
:func:`option`): its help text, its kind (how a value is written), its choices, its name on each front door,
and the front doors that deliberately leave it out (with the reason). The front doors read this table:

* ``relion-canon run`` and ``relion-canon cryosparc-job`` declare their click options from it
  (:mod:`relion_canon.cli.job_options`),
* ``relion_canon_external`` declares and parses its RELION params from it (:mod:`relion_canon.relion.external`),

so a field added to ``JobConfig`` with an :func:`option` appears in all of them. Every front door checks the
values it was given against the same table (:func:`check_config`: range, choices, finite numbers, a field's own
rule) before any file is read, and names the option as that front door spells it. A field holding a nested
config dataclass contributes that dataclass's options (:func:`job_options` walks into it); option names stay
flat, so they must be unique across the nesting.

This module imports neither click nor torch: choices that need a heavy import (the model names) are given as
a function, called only when a front door is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from relion_canon.errors import InputError

RUN = "run"  # relion-canon run
EXTERNAL = "external"  # relion_canon_external (RELION External job)
CRYOSPARC = "cryosparc"  # relion-canon cryosparc-job
FRONT_DOORS = (RUN, EXTERNAL, CRYOSPARC)

# How a value is written (on the command line, or as a RELION param value).
TEXT, PATH, INT, FLOAT, BOOL, RANGE, PAIRS = "text", "path", "int", "float", "bool", "range", "pairs"
KINDS = (TEXT, PATH, INT, FLOAT, BOOL, RANGE, PAIRS)

_KEY = "option"


@dataclass(frozen=True)
class Option:
    """How one ``JobConfig`` field is offered to users."""

    help: str
    kind: str
    # A fixed tuple, or a function giving one (the model names need torch, imported only when asked).
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    cli_flag: str | None = None  # click declaration, e.g. "--outliers" or "--labels/--no-labels"; None: derived
    # RELION param label; None: the field name. RELION 3.1-5.0 show a label in a box about 12 characters
    # wide (relion_canon.relion.gui_template.LABEL_WIDTH_PX), so a longer field name needs a short label.
    external_param: str | None = None
    # Labels the param had before: still accepted, so that jobs saved with them still run; the GUI template,
    # the job.star files, the docs and the list of known labels show external_param only.
    external_aliases: tuple[str, ...] = ()
    # Front door -> why it does not offer this field (the field then keeps its default there).
    not_in: Mapping[str, str] = field(default_factory=dict)
    # Words that mean None on every front door (train_particles: "all" or "0" = every particle).
    none_words: tuple[str, ...] = ()
    # The numbers accepted (inclusive), checked on every front door by :func:`check_config`.
    minimum: float | None = None
    maximum: float | None = None
    # A rule of the field's own (the device's spelling): the value -> why it is refused, or None.
    check: Callable[[Any], str | None] | None = None

    def choice_names(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def choose(self, value: str) -> str:
        """``value`` as one of the choices (case-insensitive); ValueError naming them otherwise."""
        names = self.choice_names()
        if names is None or value.lower() in names:
            return value.lower() if names is not None else value
        raise ValueError(f"{value!r} is not one of {', '.join(names)}")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (a phrase: "must be at least 1, got 0"), or None when it is usable.
        None is always usable: it is the field's automatic setting."""
        if value is None:
            return None
        if self.kind in (INT, FLOAT):
            return self._number_problem(value)
        if self.kind == RANGE:
            return range_problem(value)
        if self.kind == TEXT and self.choices is not None:
            try:
                self.choose(str(value))
            except ValueError as exc:
                return str(exc)
        if self.check is not None:
            return self.check(value)
        return None

    def _number_problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.kind == INT and value != int(value):
            return f"expected a whole number, got {value}"
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and not low <= value <= high:
            return f"must be between {_num(low)} and {_num(high)}, got {_num(value)}"
        if low is not None and value < low:
            return f"must be at least {_num(low)}, got {_num(value)}"
        if high is not None and value > high:
            return f"must be at most {_num(high)}, got {_num(value)}"
        return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# A defocus range's upper end below this is a range in µm, not in Å.
MIN_DEFOCUS_RANGE_MAX = 100.0


def range_problem(value: Any) -> str | None:
    """A defocus range (min, max) in Å: two finite numbers with 0 < min < max, the max clearly in Å."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return f"expected min and max in Å (e.g. 5000 25000), got {value!r}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"expected finite numbers, got {_num(lo) if math.isfinite(lo) else lo} {_num(hi) if math.isfinite(hi) else hi}"
    if not 0 < lo < hi:
        return f"expected 0 < min < max, got {_num(lo)} {_num(hi)}"
    if hi < MIN_DEFOCUS_RANGE_MAX:
        return f"is in Å, not µm: got {_num(lo)} {_num(hi)} (e.g. 1 µm = 10000)"
    return None


def option(default: Any = dataclasses.MISSING, *, help: str, kind: str,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING, **settings: Any) -> Any:
    """A ``dataclasses.field`` carrying its :class:`Option`; ``settings`` are the Option's other fields."""
    if kind not in KINDS:
        raise ValueError(f"option kind {kind!r} is not one of {', '.join(KINDS)}")
    metadata = {_KEY: Option(help=help, kind=kind, **settings)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class JobOption:
    """One entry of the table: a field with its Option, where it sits in the config, and its default."""

    name: str  # the field name; unique across nested configs
    path: tuple[str, ...]  # field names from the top config down to this field
    option: Option
    default: Any

    def offered_by(self, front_door: str) -> bool:
        return front_door not in self.option.not_in

    @property
    def cli_flag(self) -> str:
        return self.option.cli_flag or "--" + self.name.replace("_", "-")

    @property
    def external_param(self) -> str:
        return self.option.external_param or self.name

    @property
    def external_labels(self) -> tuple[str, ...]:
        """Every label the External job reads this param under: its label, then its old ones."""
        return (self.external_param, *self.option.external_aliases)

    def name_on(self, front_door: str | None) -> str:
        """The option as ``front_door`` spells it (``--max-shift``, RELION's ``--max_shift``); the field
        name where it is not offered there or no front door is given (a job started from Python)."""
        if front_door is None or not self.offered_by(front_door):
            return self.name
        if front_door == EXTERNAL:
            return "--" + self.external_param
        return self.cli_flag.split("/")[0]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def job_options(config_cls: type, front_door: str | None = None,
                _path: tuple[str, ...] = ()) -> Iterator[JobOption]:
    """The table: every field of ``config_cls`` that carries an Option, nested config dataclasses included,
    in declaration order; with ``front_door``, only those that front door offers."""
    for f in dataclasses.fields(config_cls):
        opt = f.metadata.get(_KEY)
        if opt is not None:
            entry = JobOption(f.name, (*_path, f.name), opt, _default(f))
            if front_door is None or entry.offered_by(front_door):
                yield entry
            continue
        nested = _default(f)
        if dataclasses.is_dataclass(nested) and not isinstance(nested, type):
            yield from job_options(type(nested), front_door, (*_path, f.name))


class OptionError(InputError):
    """An option's value that no job can use; one line naming the option."""


def check_config(config: Any, front_door: str | None = None) -> None:
    """Refuse the first value of ``config`` the table does not accept, as :class:`OptionError` naming the option
    as ``front_door`` spells it. Every front door calls this before reading a file, and the job again, so a
    config built in Python is checked too."""
    for entry in job_options(type(config)):
        value: Any = config
        for name in entry.path:
            value = getattr(value, name)
        problem = entry.option.problem(value)
        if problem is not None:
            raise OptionError(f"{entry.name_on(front_door)}: {problem}")


def build_config(config_cls: type, values: Mapping[str, Any]) -> Any:
    """``config_cls`` with the given option values (by option name, nested ones too); the rest default."""
    names = {entry.name for entry in job_options(config_cls)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no option(s) {', '.join(sorted(unknown))}")
    return _build(config_cls, values)


def _build(config_cls: type, values: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if _KEY in f.metadata:
            if f.name in values:
                kwargs[f.name] = values[f.name]
            continue
        nested = _default(f)
        if dataclasses.is_dataclass(nested) and not isinstance(nested, type):
            kwargs[f.name] = _build(type(nested), values)
    return config_cls(**kwargs)


def parse_model_options(pairs: Sequence[str | None]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``) → model options: a JSON value where it parses as one, else the text;
    ``-`` in keys read as ``_``. ValueError for a pair without ``=``; empty entries are skipped."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        pair = (pair or "").strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value.strip()
    return options
