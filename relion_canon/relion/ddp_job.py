"""One process of the External job on several GPUs; ``relion_canon_external --gpu 0,1`` starts one per GPU
through torchrun::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m relion_canon.relion.ddp_job SETTINGS.json

Each process runs the whole job (:func:`relion_canon.job.run_job`) with the job's own settings: the training
engine's DistributedDataParallel shares every batch, and every pass over the particles (prediction, the
classification's searches, the defocus fit) is shared between the processes (:mod:`relion_canon.parallel`).
Rank 0 writes the results into the folder the External job holds, which has claimed their names, and writes
its lines to run.out; the External job then names the output nodes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
    from relion_canon.job import run_job
    from relion_canon.parallel import is_writer

    argv = list(sys.argv[1:] if argv is None else argv)
    settings = json.loads(Path(argv[0]).read_text())
    config = job_config_from_dict(settings["config"])

    # One copy of each line in run.out, not one per process; the others say only what fails.
    with log_to(sys.stdout, level=logging.INFO if is_writer() else logging.ERROR):
        try:
            star = read_star(settings["particles"])
            run_job(star, Path(settings["out_dir"]), config, resume=settings["resume"],
                    context=RunContext(progress=False), input_checked=True, folder_held=True)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
