"""Checks of a STAR file's raw bytes that starfile's reader would otherwise misread without a word."""

from __future__ import annotations

import re
from pathlib import Path

LONE_CR = re.compile(rb"\r(?!\n)")


def lone_carriage_return_line(path: Path, chunk: int = 1 << 24) -> int | None:
    """1-based line of the first CR that no LF follows, or None.

    starfile counts a file's lines by LF but reads them through ``linecache``, which also ends a line at a lone
    CR: one such byte splits a row in two, shifts every later line by one and silently drops the last row.
    """
    lines_before, carry = 0, b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            data = carry + block
            # A CR at the end of a block is judged with the next block, where its LF would be.
            carry = b"\r" if block and data.endswith(b"\r") else b""
            body = data[: len(data) - len(carry)]
            m = LONE_CR.search(body)
            if m:
                return lines_before + body.count(b"\n", 0, m.start()) + 1
            if not block:
                return None
            lines_before += body.count(b"\n")


def why_not_utf8(path: Path) -> str | None:
    """Why the file is not UTF-8 text, or None: starfile then sees no lines at all and finds no blocks."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 text"
    return None
