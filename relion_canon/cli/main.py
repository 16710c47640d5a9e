"""`relion-canon`: one command, a sub-command per job. Sub-commands are thin: parse, call, report."""

from __future__ import annotations

import sys

import click

from relion_canon import __version__
from relion_canon.errors import InputError


class _Group(click.Group):
    """Turn an InputError anywhere below into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"relion-canon: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relion-canon")
def cli() -> None:
    """Learn in-plane angle, defocus, weight and junk status of cryo-EM particles from the particles themselves."""


def _register() -> None:
    from relion_canon.cli.demo_cmd import demo
    from relion_canon.cli.info_cmd import info
    from relion_canon.cli.simulate_cmd import simulate
    from relion_canon.cli.train_cmd import predict_command, train_command

    for command in (simulate, info, train_command, predict_command, demo):
        cli.add_command(command)


_register()


if __name__ == "__main__":  # `python -m relion_canon.cli.main`, as torchrun starts it
    cli()
