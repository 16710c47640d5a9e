"""How glibc's malloc treats freed memory: kept for reuse in a run, handed back in a streamed predict.

A run (classification) frees and allocates buffers of hundreds of MB on every batch; glibc maps each such
block on its own and unmaps it when freed, so the kernel zero-fills the pages again on every batch. The
console scripts (and ``python -m relion_canon.cli.main``, which torchrun starts) therefore restart once with
glibc's variables set so freed blocks stay in the heap (``restart_with_kept_heap``; ``RELION_CANON_HEAP=off``
or any ``MALLOC_*`` variable of the user's own turns it off). A streamed ``predict`` wants the opposite:
glibc raises its mmap and trim thresholds after large blocks are freed (up to 32 MB and 64 MB), so each
slice's temporary arrays would be kept and the footprint would grow with every slice;
``return_freed_memory`` fixes them low. Measured: ``benchmarks/README.md``,
"Figures behind the defaults". Elsewhere (musl, macOS) both do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_TOP_PAD = -2
_DEFAULT_TOP_PAD = 128 << 10  # glibc's own, undoing the kept heap's pad for streamed runs
_THRESHOLD = 1 << 20  # blocks of 1 MiB and more are mapped on their own and unmapped when freed


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 1 MiB (idempotent); True where that was possible."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
            and bool(mallopt(_M_TOP_PAD, _DEFAULT_TOP_PAD)))


# mallopt cannot raise the mmap threshold past 32 MB; glibc's environment variables can, but only before the
# process starts, hence a re-exec.
_KEPT_HEAP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
    "MALLOC_TOP_PAD_": str(1 << 30),
}
_MARK = "RELION_CANON_HEAP"


def kept_heap_env(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to restart with so that freed buffers are reused; None where it is already in force,
    the user set glibc's malloc variables, or the C library is not glibc."""
    if environ.get(_MARK) or any(key in environ for key in _KEPT_HEAP_ENV):
        return None
    if getattr(_libc(), "gnu_get_libc_version", None) is None:
        return None
    return {**environ, **_KEPT_HEAP_ENV, _MARK: "kept"}


def restart_with_kept_heap(module: str | None = None) -> None:
    """Replace this process by itself with the kept-heap environment: a console script's first call, or, given
    the ``module`` it was started as (``python -m``, as torchrun starts each process), the same module again."""
    env = kept_heap_env(dict(os.environ))
    if env is None:
        return
    if module is not None:
        program, argv = sys.executable, [sys.executable, "-m", module, *sys.argv[1:]]
    else:
        program = shutil.which(sys.argv[0]) if sys.argv and sys.argv[0] else None
        argv = [sys.argv[0], *sys.argv[1:]]
    if not program or not os.access(program, os.X_OK):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, argv, env)
    except OSError:
        return
