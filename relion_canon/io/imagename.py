"""RELION image names: ``N@stack.mrcs`` (1-based N, zero padding optional) or a single-image file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from relion_canon.errors import InputError


class ImageRef(NamedTuple):
    index: int  # 0-based position in the stack
    path: str  # as written in the STAR file


# An MRC header counts images in a signed 32-bit field, so no stack holds more.
MAX_IMAGE_NUMBER = 2**31 - 1


def _shown(name: str, limit: int = 80) -> str:
    """The name for an error message, cut short so that one corrupt row cannot flood the terminal."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def parse_image_name(name: str, file: str | Path | None = None, row: int | None = None) -> ImageRef:
    """Split ``000012@Extract/job1/mic.mrcs`` into (11, 'Extract/job1/mic.mrcs').

    A name without ``@`` is a single image (index 0). The number is plain ASCII digits, as RELION writes it:
    ``int()`` alone would also take ``1_0`` as 10 or other scripts' digits.
    """
    name = str(name).strip()
    if not name:
        raise InputError("empty image name", file, row)
    if "@" not in name:
        return ImageRef(0, name)
    number, _, path = name.partition("@")
    if not path:
        raise InputError(f"image name {_shown(name)} has no file after '@'", file, row)
    if not (number.isascii() and number.isdigit()):
        raise InputError(f"image name {_shown(name)}: {_shown(number, 20)} is not an image number", file, row)
    digits = number.lstrip("0")
    # Leading zeros are RELION's padding; beyond 10 significant digits the number cannot be an image.
    n = int(digits or "0") if len(digits) <= 10 else MAX_IMAGE_NUMBER + 1
    if n < 1:
        raise InputError(f"image name {_shown(name)}: image numbers start at 1", file, row)
    if n > MAX_IMAGE_NUMBER:
        raise InputError(f"image name {_shown(name)}: no MRC stack holds more than {MAX_IMAGE_NUMBER} images", file, row)
    return ImageRef(n - 1, path)


def format_image_name(index: int, path: str, width: int = 6) -> str:
    """RELION's own spelling: 1-based, zero-padded to six digits."""
    return f"{index + 1:0{width}d}@{path}"


def resolve_path(
    path: str, star_dir: Path | None, project_dir: Path | None = None, data_dir: Path | None = None
) -> Path | None:
    """Find an image file the way RELION does, then the usual fallbacks.

    RELION resolves names relative to the project directory (its working directory). Files
    moved with their STAR file resolve relative to the STAR's folder, first with the whole
    name, then with its basename (a set moved out of its project keeps its stacks beside it);
    ``data_dir`` (like cryoDRGN's ``--datadir``) is tried last. ``None`` if nothing exists.
    """
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [(project_dir or Path.cwd()) / p]
        if star_dir is not None:
            candidates.append(star_dir / p)
    if star_dir is not None:
        candidates.append(star_dir / p.name)
    if data_dir is not None:
        candidates += [data_dir / p, data_dir / p.name]
    for c in candidates:
        try:
            if c.is_file():
                return c
        except OSError:  # e.g. a name too long for the file system: it cannot name an existing file
            continue
    return None
