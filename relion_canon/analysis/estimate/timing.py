"""Seconds per named step of the analysis stage, for the report: where a job's time goes."""

from __future__ import annotations

import time


class Clock:
    """Seconds per named step, summed over repeats (e.g. over classes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str | None = None) -> None:
        """Charge the time since the last lap to ``name`` (None: to nothing, just restart)."""
        now = time.perf_counter()
        if name is not None:
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now
