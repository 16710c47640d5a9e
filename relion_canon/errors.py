"""The one error type users see: a problem with their input, named by file and row."""

from __future__ import annotations

from os import PathLike


class InputError(Exception):
    """Bad user input. ``str()`` is one line naming the file and, where it applies, the row.

    Rows are reported 1-based, as they appear in the STAR loop (first data line = row 1),
    because that is how a user finds them in a text editor or ``relion_star_handler``.
    """

    def __init__(self, message: str, file: str | PathLike | None = None, row: int | None = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.row = row
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message
