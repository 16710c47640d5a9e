"""One process of the External job's training on several GPUs; ``relion_canon_external --gpu 0,1`` starts
one per GPU through torchrun::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m relion_canon.relion.ddp_train SETTINGS.json

Each process runs the job's own training step (``relion_canon.job.train_for_job``: the same network
options, training subset and box as a single-process job), so the training engine's DistributedDataParallel
shares every batch between the processes and rank 0 writes ``checkpoint.pt`` / ``model.pt``. The External job
then resumes from that checkpoint in its own process, finds nothing left to train, and predicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence


def job_config_from_dict(values: dict[str, Any]):
    """Inverse of ``JobConfig.to_dict`` (JSON turns the defocus range into a list)."""
    from relion_canon.job import JobConfig

    names = {f.name for f in dataclasses.fields(JobConfig)}
    kwargs = {k: v for k, v in values.items() if k in names}
    if kwargs.get("defocus_range") is not None:
        kwargs["defocus_range"] = tuple(kwargs["defocus_range"])
    return JobConfig(**kwargs)


def write_settings(path: Path, particles: str, out_dir: str, config, resume: bool) -> Path:
    path.write_text(json.dumps({"particles": particles, "out_dir": out_dir, "resume": resume,
                                "config": config.to_dict()}, default=list))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import torch.distributed as dist

    from relion_canon.context import RunContext
    from relion_canon.io.star import read_star
    from relion_canon.logs import log_to
    from relion_canon.job import train_for_job

    argv = list(sys.argv[1:] if argv is None else argv)
    settings = json.loads(Path(argv[0]).read_text())
    config = job_config_from_dict(settings["config"])
    is_main = int(os.environ.get("RANK", "0")) == 0

    # One copy of each line in run.out, not one per process.
    lines = log_to(sys.stdout) if is_main else contextlib.nullcontext()
    try:
        star = read_star(settings["particles"])
        with lines:
            train_for_job(star, Path(settings["out_dir"]), config, resume=settings["resume"],
                          context=RunContext(progress=False))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
