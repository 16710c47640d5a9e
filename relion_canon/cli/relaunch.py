"""``--gpu 0,1`` on a command outside torchrun: the same command again, one process per GPU, through torchrun (the
standard launcher). ``relion-canon train`` and ``run`` use it."""

from __future__ import annotations

import os
import sys

import click


def relaunch_on_gpus(gpu: str | None) -> None:
    """Replace this process by torchrun starting this same command once per GPU of ``gpu``, when it names
    several and this is not already one of torchrun's processes; else return."""
    ids = [g.strip() for g in (gpu or "").split(",") if g.strip()]
    if len(ids) < 2 or "WORLD_SIZE" in os.environ:
        return
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(ids))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}",
            "-m", "relion_canon.cli.main", *sys.argv[1:]]
    click.echo(f"Launching {len(ids)} processes with torchrun on GPUs {','.join(ids)}", err=True)
    os.execve(sys.executable, args, env)
