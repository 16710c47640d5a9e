"""Hand freed memory back to the system as the work goes, so a long streamed run keeps a flat footprint.

glibc raises its mmap and trim thresholds after large blocks are freed (up to 32 MB and 64 MB), so the
temporary arrays of each slice of particles are then carved from the heap and, once freed, kept there, and
the footprint grows with every slice (measured: ``benchmarks/README.md``, "Figures behind the defaults").
Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 20  # blocks of 1 MiB and more are mapped on their own and unmapped when freed


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 1 MiB (idempotent); True where that was possible."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
