"""`relion-canon`: one command, a sub-command per job. Sub-commands are thin: parse, call, report.

Sub-commands are imported only when run, so `relion-canon info` or `--help` does not pay for importing
torch.
"""

from __future__ import annotations

import importlib
import signal
import sys

import click

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.heap import restart_with_kept_heap

# name → (module:attribute, one-line help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("relion_canon.cli.info_cmd:info", "Summarise a particle STAR file or stack and list every problem in it."),
    "simulate": ("relion_canon.cli.simulate_cmd:simulate", "Simulate particles with ground truth, in RELION's conventions."),
    "train": ("relion_canon.cli.train_cmd:train_command", "Train a model on the particles of a STAR file."),
    "predict": ("relion_canon.cli.train_cmd:predict_command", "Predict each particle's in-plane angle with a trained model."),
    "run": ("relion_canon.cli.run_cmd:run_command", "The whole job: learn angles, defocus, weights, outliers; write them back."),
    "demo": ("relion_canon.cli.demo_cmd:demo", "The main job on a built-in simulated dataset: simulate, run, evaluate."),
    "convert": ("relion_canon.cli.convert_cmd:convert", "Convert particles between cryoSPARC .cs and RELION STAR."),
    "cryosparc-job": ("relion_canon.cli.cryosparc_cmd:cryosparc_job", "Run the job on cryoSPARC particles as a cryoSPARC External job."),
    "evaluate": ("relion_canon.cli.evaluate_cmd:evaluate_command", "Score a job's output against simulation ground truth or a RELION run."),
}


class _Group(click.Group):
    """Lazy sub-commands; an InputError anywhere below becomes one line on stderr and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        # SIGTERM (a scheduler's kill, a user's kill) becomes a normal exit, so every output being written is
        # cleaned up by its context manager instead of leaving a temporary file behind.
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"relion-canon: error: {exc}", err=True)
            sys.exit(2)


def _terminate(signum: int, frame) -> None:
    click.echo("relion-canon: stopped by SIGTERM", err=True)
    sys.exit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relion-canon")
def cli() -> None:
    """Learn in-plane angle, defocus, weight and junk status of cryo-EM particles from the particles themselves."""


def main() -> None:
    """Console-script entry point: restarts once with the kept-heap environment, then runs the commands."""
    restart_with_kept_heap()
    cli()


if __name__ == "__main__":  # `python -m relion_canon.cli.main`, as torchrun starts it
    restart_with_kept_heap(module="relion_canon.cli.main")
    cli()
