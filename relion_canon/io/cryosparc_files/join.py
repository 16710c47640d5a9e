"""Tables joined on the cryoSPARC ``uid``: a particles ``.cs`` with its passthrough, and results with their input.

A particle keeps its 64-bit ``uid`` through every cryoSPARC job; in a RELION table we carry it as
:data:`~relion_canon.io.cryosparc_files.layout.UID_COLUMN`, so results can be written back into the input rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.cryosparc_files.format import load_cs
from relion_canon.io.cryosparc_files.layout import UID_COLUMN, field_list
from relion_canon.io.star import ParticleStar


def check_unique_uids(records: np.ndarray, path: str | Path) -> None:
    """:class:`InputError` naming the first two rows of a uid that appears more than once."""
    uids = records["uid"]
    uniq, first, counts = np.unique(uids, return_index=True, return_counts=True)
    if uniq.size != uids.size:
        dup = int(np.flatnonzero(counts > 1)[0])
        rows = np.flatnonzero(uids == uniq[dup])
        raise InputError(f"uid {int(uniq[dup])} appears more than once (rows {rows[0] + 1} and {rows[1] + 1})",
                         path, int(rows[1]) + 1)


def uid_positions(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Index of each needle in ``haystack`` (unique values), −1 where absent."""
    haystack = np.asarray(haystack, dtype=np.uint64)
    needles = np.asarray(needles, dtype=np.uint64)
    if len(haystack) == 0:
        return np.full(len(needles), -1, np.int64)
    order = np.argsort(haystack, kind="stable")
    sorted_h = haystack[order]
    pos = np.minimum(np.searchsorted(sorted_h, needles), len(sorted_h) - 1)
    return np.where(sorted_h[pos] == needles, order[pos], -1)


def join_passthrough(main: np.ndarray, passthrough: np.ndarray, main_path: str | Path,
                     passthrough_path: str | Path) -> np.ndarray:
    """Inner join on ``uid`` in the main file's row order; the main file's fields win over the passthrough's.

    Every particle of the main file must be in the passthrough file (a passthrough file may hold more).
    """
    check_unique_uids(main, main_path)
    check_unique_uids(passthrough, passthrough_path)
    pos = uid_positions(passthrough["uid"], main["uid"])
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        row = int(missing[0])
        raise InputError(
            f"uid {int(main['uid'][row])} is not in the passthrough file {passthrough_path} "
            f"({missing.size} of {len(main)} particles do not join; is it the passthrough of the same job?)",
            main_path, row + 1)
    extra = [n for n in passthrough.dtype.names if n not in main.dtype.names]
    out = np.zeros(len(main), dtype=field_list(main.dtype) + [(n, passthrough.dtype[n]) for n in extra])
    for name in main.dtype.names:
        out[name] = main[name]
    for name in extra:
        out[name] = passthrough[name][pos]
    return out


def read_cs_records(path: str | Path, passthrough: str | Path | None = None) -> np.ndarray:
    """A particles ``.cs`` joined with its passthrough ``.cs`` (if given), checked to be usable."""
    records = load_cs(path)
    if passthrough is not None:
        records = join_passthrough(records, load_cs(passthrough), path, passthrough)
    else:
        check_unique_uids(records, path)
    if len(records) == 0:
        raise InputError("the .cs file has no particles", path)
    missing = [f for f in ("blob/path", "blob/idx") if f not in records.dtype.names]
    if missing:
        hint = "" if passthrough is not None else "; if the job split its output, give the passthrough .cs too"
        raise InputError(f"no {' / '.join(missing)} field: this .cs does not say where the particle images are "
                         f"(not an extracted-particles output{hint})", path)
    return records


def star_uids(star: ParticleStar, required: bool = True) -> np.ndarray | None:
    """The ``rlnCanonUid`` column as uint64; InputError when required and absent or not whole numbers."""
    p = star.particles
    if UID_COLUMN not in p.columns:
        if required:
            raise InputError(f"no {UID_COLUMN} column: these particles did not come from a cryoSPARC .cs, "
                             "so they cannot be joined back to one", star.path)
        return None
    col = p[UID_COLUMN]
    if col.dtype.kind in "iu":
        return col.to_numpy().astype(np.uint64)
    out = np.empty(len(col), np.uint64)
    for row, value in enumerate(col.astype(str)):
        try:
            number = int(value)
            if number < 0:
                raise ValueError
            out[row] = number
        except (ValueError, OverflowError):
            raise InputError(f"{UID_COLUMN} {value!r} is not a cryoSPARC uid", star.path, row + 1) from None
    return out


def result_positions(records: np.ndarray, results: ParticleStar) -> np.ndarray:
    """For each results row, its row in the input ``.cs`` records (joined on ``rlnCanonUid`` = ``uid``)."""
    uids = star_uids(results)
    pos = uid_positions(records["uid"], uids)
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        row = int(missing[0])
        raise InputError(f"{UID_COLUMN} {int(uids[row])} is not a particle of the input .cs "
                         f"({missing.size} particles do not join)", results.path, row + 1)
    return pos
