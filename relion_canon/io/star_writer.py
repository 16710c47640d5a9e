"""STAR text for data blocks: simple key/value blocks and loop tables, in the layout RELION writes.

A file is :data:`FILE_HEADER`, then for each block its ``# version`` line (RELION 3.1+) and its text. Every
piece ends with a newline, so a file can also be written a piece at a time (the particle loop a slice of rows
at a time) and come out byte for byte the same as written whole.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable, Mapping

import pandas as pd

FILE_HEADER = "\n# Created by relion_canon\n\n"
# Two blank lines close every block.
BLOCK_END = "\n\n"
# Written for a missing value; starfile and pandas read it back as missing.
NA_TEXT = "<NA>"
_LOOP_SEPARATOR = "\t"
_SIMPLE_SEPARATOR = "\t\t\t"


def format_float(x: float) -> str:
    """The shortest text that reads back to the same double, always with a decimal point or exponent, so a
    read/write/read round trip is lossless and floats stay floats."""
    return repr(float(x))


def quote_value(value: Any) -> Any:
    """A string that a STAR reader would split at a space, or an empty one, in double quotes; anything else as
    is."""
    if isinstance(value, str) and (" " in value or not value):
        return f'"{value}"'
    return value


def _lines_text(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def version_text(version: int | None) -> str:
    """RELION's ``# version`` line that precedes each block of a 3.1+ file; nothing for a 3.0-style file."""
    return "" if version is None else f"# version {version}\n\n"


def simple_block_text(name: str, values: Mapping[str, Any]) -> str:
    """A ``data_`` block of ``_label value`` lines."""
    items = (f"_{key}{_SIMPLE_SEPARATOR}{quote_value(value)}" for key, value in values.items())
    return _lines_text([f"data_{name}", "", *items]) + BLOCK_END


def loop_header_text(name: str, columns: Iterable[str]) -> str:
    """A loop block's ``data_`` line and column labels, numbered from 1 as RELION numbers them."""
    labels = (f"_{column} #{k}" for k, column in enumerate(columns, 1))
    return _lines_text([f"data_{name}", "", "loop_", *labels])


def loop_rows_text(table: pd.DataFrame) -> str:
    """A loop's rows, tab separated, floats by :func:`format_float`, missing values as :data:`NA_TEXT`.

    The row text is split with ``str.splitlines`` and joined with LF, which keeps the bytes of the writer this
    one replaced even for values holding line-break characters.
    """
    text = table.map(quote_value).to_csv(
        sep=_LOOP_SEPARATOR,
        header=False,
        index=False,
        float_format=format_float,
        na_rep=NA_TEXT,
        quoting=csv.QUOTE_NONE,
    )
    return _lines_text(text.splitlines())


def loop_block_text(name: str, table: pd.DataFrame) -> str:
    return loop_header_text(name, table.columns) + loop_rows_text(table) + BLOCK_END


def block_text(name: str, block: pd.DataFrame | Mapping[str, Any]) -> str:
    """A table as a loop block, a mapping as a simple block."""
    if isinstance(block, pd.DataFrame):
        return loop_block_text(name, block)
    return simple_block_text(name, block)


def star_text(blocks: Mapping[str, pd.DataFrame | Mapping[str, Any]], version: int | None) -> str:
    """A whole STAR file: every block in order, each preceded by the ``# version`` line when ``version`` is
    given."""
    return FILE_HEADER + "".join(version_text(version) + block_text(name, block) for name, block in blocks.items())
