"""The job's options as click options, declared from the one table (:mod:`relion_canon.options`).

``relion-canon run`` and ``relion-canon cryosparc-job`` decorate their command with :func:`job_click_options`
and turn what click parsed into a :class:`~relion_canon.job.JobConfig` with :func:`job_config_from_click`, which
checks every value against the table (:func:`~relion_canon.options.check_config`) before anything is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import click

from relion_canon.options import (
    BOOL,
    FLOAT,
    INT,
    PAIRS,
    PATH,
    RANGE,
    TEXT,
    JobOption,
    Option,
    build_config,
    check_config,
    job_options,
    parse_model_options,
)
from relion_canon.job import JobConfig

F = TypeVar("F", bound=Callable[..., Any])


class _Choice(click.ParamType):
    """click.Choice whose names are asked for only when needed (the model names import torch)."""

    name = "choice"

    def __init__(self, option: Option):
        self.option = option

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.option.choice_names() or ()) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self.option.choose(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _IntOrNone(click.ParamType):
    """A whole number, or one of the option's words for None (train_particles: 0 or all)."""

    name = "integer"

    def __init__(self, option: Option):
        self.option = option

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or str(value).strip().lower() in self.option.none_words:
            return None
        return click.INT.convert(value, param, ctx)


def click_option(entry: JobOption) -> Callable[[F], F]:
    """One table entry as a click option whose destination is the field name."""
    opt = entry.option
    settings: dict[str, Any] = {"help": opt.help}
    if opt.kind == BOOL:
        if "/" in entry.cli_flag:
            settings.update(default=entry.default, show_default=True)
        else:
            settings.update(is_flag=True, default=entry.default)
    elif opt.kind == PAIRS:
        settings.update(multiple=True, metavar="KEY=VALUE")
    elif opt.kind == RANGE:
        settings.update(type=float, nargs=2, default=None)
    else:
        value_type: Any = {TEXT: str, PATH: click.Path(path_type=Path), INT: int, FLOAT: float}[opt.kind]
        if opt.choices is not None:
            value_type = _Choice(opt)
        elif opt.none_words:
            value_type = _IntOrNone(opt)
        settings.update(type=value_type, default=entry.default, show_default=entry.default is not None)
    return click.option(entry.cli_flag, entry.name, **settings)


def job_click_options(front_door: str) -> Callable[[F], F]:
    """Decorator: every option ``front_door`` offers, listed in ``--help`` in the table's order."""
    entries = list(job_options(JobConfig, front_door))

    def decorate(command: F) -> F:
        for entry in reversed(entries):  # click lists options in the reverse order of their decorators
            command = click_option(entry)(command)
        return command

    return decorate


def job_config_from_click(values: Mapping[str, Any], front_door: str) -> JobConfig:
    """The JobConfig of the values click parsed for ``front_door``'s table options (keyed by field name)."""
    settings: dict[str, Any] = {}
    for entry in job_options(JobConfig, front_door):
        value = values[entry.name]
        kind = entry.option.kind
        if kind == PATH:
            value = str(value) if value else None
        elif kind == RANGE:
            value = tuple(value) if value else None
        elif kind == PAIRS:
            try:
                value = parse_model_options(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=entry.cli_flag) from None
        settings[entry.name] = value
    config = build_config(JobConfig, settings)
    check_config(config, front_door)  # before the command reads a file or reaches a server
    return config
