"""Where the package's messages go. Modules log through ``logging.getLogger(__name__)`` and never print;
a front door chooses the destination once: standard output for the CLI and RELION's ``run.out``, and a
cryoSPARC job's event log as well for the cryoSPARC job.

A library user who sets nothing up sees warnings only (Python's default); ``log_to`` shows the progress lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator, TextIO

PACKAGE_LOGGER = "relion_canon"


class _CallHandler(logging.Handler):
    """Hands each formatted line to a function (e.g. a cryoSPARC job's event log, or click.echo)."""

    def __init__(self, write: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:  # a failing destination must not stop the job; logging reports it on stderr
            self.handleError(record)


class _FlushingStreamHandler(logging.StreamHandler):
    """Flushes every line: RELION's GUI shows run.out while the job runs."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.flush()


@contextlib.contextmanager
def log_to(*destinations: TextIO | Callable[[str], None], level: int = logging.INFO) -> Iterator[None]:
    """Send the package's messages at ``level`` and above, as plain lines, to each destination (a stream such as
    ``sys.stdout``, or a function taking one line) for the duration of the ``with`` block."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handlers: list[logging.Handler] = []
    for dest in destinations or (sys.stdout,):
        handler = _CallHandler(dest) if callable(dest) and not hasattr(dest, "write") else _FlushingStreamHandler(dest)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(level)
        handlers.append(handler)
        logger.addHandler(handler)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.setLevel(min(level, previous_level) if previous_level else level)
    logger.propagate = False  # the lines are ours to place; a root handler would print them twice
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
