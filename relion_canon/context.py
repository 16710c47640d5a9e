"""What one run carries through every stage besides its data and options: where names resolve, whether to
show progress bars, and how the front door asks the work to stop.

Passed as one small value instead of three loose parameters through every signature; messages go through
:mod:`logging` (``logging.getLogger(__name__)`` in each module; the front doors attach the handlers, see
:mod:`relion_canon.logs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunContext:
    """``project_dir``: the folder relative image names resolve against (RELION's project directory, the
    cryoSPARC project); None: the working directory. ``should_stop``: polled between epochs, batches and
    rounds; when it returns True the work stops (RELION's abort, a signal). ``progress``: progress bars on
    standard error."""

    project_dir: Path | None = None
    progress: bool = True
    should_stop: Callable[[], bool] = _never

    def __post_init__(self) -> None:
        if self.project_dir is not None and not isinstance(self.project_dir, Path):
            object.__setattr__(self, "project_dir", Path(self.project_dir))

    def check_stop(self, what: str) -> None:
        """Raise ``InterruptedError`` naming ``what`` was stopped, when a stop was asked for."""
        if self.should_stop():
            raise InterruptedError(f"{what} stopped on request")


QUIET = RunContext(progress=False)
"""No progress bars, never stopped, names resolve against the working directory (tests, library use)."""
