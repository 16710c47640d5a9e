"""The External job on several GPUs, from the launching side: the torchrun command that starts one
:mod:`relion_canon.relion.ddp_job` process per GPU, running it while polling RELION's abort request, and stopping
its whole process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable


def distributed_job_command(settings_path: str, n_processes: int) -> list[str]:
    """torchrun, the standard launcher (as ``relion-canon run --gpu 0,1`` uses it), starting one
    :mod:`relion_canon.relion.ddp_job` process per GPU. A child, not ``exec``: the External job must live on to
    name the output nodes and, whatever happens, to write the exit file."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}",
            "-m", "relion_canon.relion.ddp_job", settings_path]


def run_torchrun(cmd: list[str], gpu_ids: list[str], should_stop: Callable[[], bool]) -> bool:
    """Run ``cmd`` on the GPUs ``gpu_ids``: True when it finished, False when ``should_stop`` asked for a stop
    (the processes are stopped first); RuntimeError when it failed. However this returns or raises (a signal
    included), no process of it is left running."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpu_ids))
    # Its own session, so that the whole torchrun tree can be stopped at once.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if should_stop():
                    return False
        if rc != 0:
            raise RuntimeError(f"the torchrun processes exited with code {rc} (their messages are above in run.err)")
        return True
    finally:
        if proc.poll() is None:
            _stop_process_group(proc)


def _stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
