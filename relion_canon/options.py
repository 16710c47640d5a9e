"""The job's options, declared once on the fields of :class:`~relion_canon.job.JobConfig`.

Each user-facing field carries an :class:`Option` in its ``dataclasses.field`` metadata (made with
:func:`option`): its help text, its kind (how a value is written), its choices, its name on each front door,
and the front doors that deliberately leave it out (with the reason). The front doors read this table:

* ``relion-canon run`` and ``relion-canon cryosparc-job`` declare their click options from it
  (:mod:`relion_canon.cli.job_options`),
* ``relion_canon_external`` declares and parses its RELION params from it (:mod:`relion_canon.relion.external`),

so a field added to ``JobConfig`` with an :func:`option` appears in all of them. A field holding a nested
config dataclass contributes that dataclass's options (:func:`job_options` walks into it); option names stay
flat, so they must be unique across the nesting.

This module imports neither click nor torch: choices that need a heavy import (the model names) are given as
a function, called only when a front door is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

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
    external_param: str | None = None  # RELION param label; None: the field name
    # Front door -> why it does not offer this field (the field then keeps its default there).
    not_in: Mapping[str, str] = field(default_factory=dict)
    # Words that mean None on every front door (train_particles: "all" or "0" = every particle).
    none_words: tuple[str, ...] = ()
    # The smallest number accepted. Checked by the External job; the command line keeps taking any number, as
    # it always has.
    minimum: float | None = None

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
