"""Reading and writing ``.cs`` files: the NUMPY and CSDAT formats, and their tables as plain record arrays.

A ``.cs`` file is a 1-D NumPy record array (NUMPY format, ``np.load`` reads it) or cryosparc-tools' compressed
CSDAT format; every row has a 64-bit ``uid``. Here a ``.cs`` is held as a plain NumPy structured array with
strings as fixed-width bytes, exactly what ``np.save`` writes back, so that nothing but reading CSDAT needs
cryosparc-tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
INSTALL_HINT = "pip install 'relion_canon[cryosparc]' (cryosparc-tools, the version matching your cryoSPARC)"


def cryosparc_tools_version() -> str | None:
    """The installed cryosparc-tools version, or None when it is not installed."""
    try:
        import cryosparc
    except ImportError:
        return None
    return str(getattr(cryosparc, "__version__", "unknown"))


def _dataset_class():
    try:
        from cryosparc.dataset import Dataset
    except ImportError:
        return None
    return Dataset


def as_records(table: Any) -> np.ndarray:
    """A cryosparc-tools ``Dataset`` or any record array as a plain, packed structured array, strings as bytes."""
    if hasattr(table, "to_records"):
        table = table.to_records(fixed=True)
    arr = np.asarray(table)
    if arr.dtype.names is None:
        raise TypeError("not a structured array / cryoSPARC dataset")
    fields = []
    for name in arr.dtype.names:
        sub = arr.dtype[name]
        if sub.kind == "O":  # str objects (a hand-made Dataset): fixed-width bytes, as np.save needs
            width = max([len(str(v).encode()) for v in arr[name]] + [1])
            sub = np.dtype(f"S{width}")
        fields.append((name, sub))
    dtype = np.dtype(fields)  # packed, without numpy.record or the padding of a field subset
    if type(arr) is np.ndarray and arr.dtype == dtype and arr.dtype.type is np.void:
        return arr
    out = np.empty(len(arr), dtype)
    for name in arr.dtype.names:
        out[name] = [str(v).encode() for v in arr[name]] if arr.dtype[name].kind == "O" else arr[name]
    return out


def _cs_magic(path: Path) -> bytes:
    """The format magic of a file that must be a ``.cs``; :class:`InputError` if it is missing or is not one."""
    if not path.exists():
        raise InputError(".cs file not found", path)
    if path.is_dir():
        raise InputError("is a directory, not a .cs file", path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic not in (NUMPY_MAGIC, CSDAT_MAGIC):
        what = "empty" if not magic else "neither NumPy nor CSDAT format"
        raise InputError(f"not a cryoSPARC .cs file ({what})", path)
    return magic


def _numpy_fields(path: Path) -> tuple[str, ...] | None:
    """The field names in a NUMPY-format file's header, or None when the header cannot be read (the load then
    says why)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            dtype = read_header(fh, max_header_size=1024**3)[2]
    except Exception:
        return None
    return tuple(dtype.names or ())


def load_cs(path: str | Path) -> np.ndarray:
    """Read one ``.cs`` file (NUMPY or CSDAT format) as a structured array; :class:`InputError` if unusable.

    Uses cryosparc-tools' ``Dataset.load`` when it is installed (it reads both formats); without it NUMPY
    files are read with ``np.load`` and CSDAT files are refused with the command that installs it.
    """
    path = Path(path)
    magic = _cs_magic(path)
    dataset = _dataset_class()
    if magic == CSDAT_MAGIC and dataset is None:
        raise InputError(f"this .cs file is in cryoSPARC's compressed CSDAT format, which needs cryosparc-tools: "
                         f"{INSTALL_HINT}", path)
    if magic == NUMPY_MAGIC and "uid" not in (_numpy_fields(path) or ("uid",)):
        # Checked before cryosparc-tools loads it: it invents random uids for such a file on every load, so no
        # result could ever be joined back to its particle.
        raise InputError("no uid field: not a cryoSPARC particle file (cryoSPARC gives every particle a uid)", path)
    try:
        if dataset is not None:
            records = as_records(dataset.load(path))
        else:
            records = np.load(path, allow_pickle=False, max_header_size=1024**3)
    except Exception as exc:  # numpy / cryosparc-tools raise many types for truncated or corrupt files
        raise InputError(f"cannot read .cs file ({type(exc).__name__}: {exc})", path) from exc
    if records.dtype.names is None or records.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (not a 1-D table with named fields)", path)
    records = as_records(records)
    if "uid" not in records.dtype.names:
        raise InputError("no uid field: not a cryoSPARC particle file", path)
    return records


def save_cs(records: np.ndarray, path: str | Path) -> Path:
    """Write a ``.cs`` in NUMPY format (what cryoSPARC and ``np.load`` read), atomically."""
    path = Path(path)
    records = as_records(records)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, records, allow_pickle=False)
    return path
