"""MRC stacks and maps through ``mrcfile``: memory-mapped reading with clear errors, atomic writing."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path

# Real-valued MRC modes: int8, int16, float32, uint16, float16. Complex (3, 4) and packed (101) are not images.
REAL_MODES = {0, 1, 2, 6, 12}


# Bytes per pixel of every mode this module can read or name in an error.
_ITEMSIZE = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}


def _parse_header(raw: bytes) -> np.void:
    """The 1024-byte header as a record, in the byte order ``mrcfile`` would choose for it.

    Same rule as ``mrcfile`` in permissive mode: the machine stamp, else little-endian, and the other order
    when only that one gives a valid mode.
    """
    header = np.frombuffer(raw, HEADER_DTYPE)[0]
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header["machst"])
    except ValueError:
        order = "<"
    header = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(order))[0]
    if int(header["mode"]) not in _ITEMSIZE:
        swapped = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(">" if order == "<" else "<"))[0]
        if int(swapped["mode"]) in _ITEMSIZE:
            header = swapped
    return header


def _header_shape(path: Path) -> tuple[int, int, int, int, int]:
    """(nz, ny, nx, mode, expected file size in bytes) from the header alone, checked against the file size.

    The header is parsed here rather than with ``mrcfile.open(header_only=True)``, which allocates the
    extended header at whatever size the header claims (2 GiB for a corrupt ``nsymbt``) before reading it.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_DTYPE.itemsize)
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"not a readable MRC file ({exc.strerror or exc})", path) from None
    if len(raw) < HEADER_DTYPE.itemsize:
        raise InputError(f"not a readable MRC file: {len(raw)} bytes, shorter than the 1024-byte header", path)
    h = _parse_header(raw)
    nx, ny, nz, mode, ext = (int(h[k]) for k in ("nx", "ny", "nz", "mode", "nsymbt"))
    itemsize = _ITEMSIZE.get(mode)
    if itemsize is None:
        raise InputError(f"unsupported MRC mode {mode}", path)
    if nx < 1 or ny < 1 or nz < 0:
        raise InputError(f"corrupt MRC header: dimensions {nx}x{ny}x{nz}", path)
    if ext < 0 or HEADER_DTYPE.itemsize + ext > size:
        raise InputError(f"corrupt MRC header: extended header of {ext} bytes in a file of {size} bytes", path)
    return nz, ny, nx, mode, HEADER_DTYPE.itemsize + ext + nx * ny * nz * itemsize


def open_stack(path: str | Path) -> mrcfile.mrcmemmap.MrcMemmap:
    """Memory-map an image stack read-only; raise :class:`InputError` for missing, truncated or odd files."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image stack not found", path)
    nz, ny, nx, mode, expected = _header_shape(path)
    if mode not in REAL_MODES:
        raise InputError(f"MRC mode {mode} is not a real-valued image mode", path)
    size = path.stat().st_size
    if size < expected:
        raise InputError(
            f"truncated stack: header says {nz} images of {nx}x{ny} ({expected} bytes) but the file has {size} bytes",
            path,
        )
    with warnings.catch_warnings():
        # Files from other tools often lack the MAP ID or machine stamp; the data are still fine.
        warnings.simplefilter("ignore")
        try:
            m = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as exc:
            raise InputError(f"cannot memory-map stack ({exc})", path) from exc
    # Permissive mrcfile gives no data where it cannot interpret the header, and a 4D array for a
    # volume-stack space group: neither is a stack of 2D images.
    if m.data is None or m.data.ndim not in (2, 3) or m.data.shape[-2:] != (ny, nx):
        shape, ispg = (None if m.data is None else m.data.shape), int(m.header.ispg)
        m.close()
        raise InputError(f"not a stack of 2D images (data shape {shape}, space group {ispg})", path)
    return m


def stack_shape(m: mrcfile.mrcmemmap.MrcMemmap) -> tuple[int, int, int]:
    """(n_images, ny, nx); a single 2D image counts as a stack of one."""
    data = m.data
    if data.ndim == 2:
        return (1, *data.shape)
    return data.shape  # type: ignore[return-value]


def header_pixel_size(m: mrcfile.mrcfile.MrcFile) -> float | None:
    """Pixel size in Å from the header, or None where the header gives 0 (not set)."""
    vs = float(m.voxel_size.x)
    return vs if vs > 0 else None


def read_map(path: str | Path) -> tuple[np.ndarray, float | None]:
    """A 3D density map as float32 (z, y, x) and its voxel size in Å (None when the header has none)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("map file not found", path)
    nz, ny, nx, mode, expected = _header_shape(path)
    if path.stat().st_size < expected:
        raise InputError("truncated map file", path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, permissive=True) as m:
                data = np.asarray(m.data, dtype=np.float32).copy()
                apix = header_pixel_size(m)
        except Exception as exc:
            raise InputError(f"cannot read map ({exc})", path) from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"expected a cubic 3D map, got shape {data.shape}", path)
    if not np.all(np.isfinite(data)):
        raise InputError("map contains NaN or infinite values", path)
    return data, apix


@contextlib.contextmanager
def stack_writer(path: str | Path, n: int, box: int, pixel_size: float) -> Iterator[np.ndarray]:
    """Yield a writable (n, box, box) float32 memory map; the stack appears at ``path`` only if all went well.

    Streaming into a memory map keeps memory flat however many particles are written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        m = mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        try:
            m.set_image_stack()
            m.voxel_size = pixel_size
            _label(m)
            yield m.data
            _set_header_stats(m)
        finally:
            m.close()


def _label(m: mrcfile.mrcobject.MrcObject) -> None:
    """One fixed label in place of mrcfile's "Created by mrcfile.py <time>": the same inputs and seed then give
    byte-identical files, whichever second they were written in."""
    m.header.label[:] = b""
    m.header.nlabl = 0
    m.add_label(f"relion_canon {__version__}")


def _set_header_stats(m: mrcfile.mrcmemmap.MrcMemmap, block: int = 4096) -> None:
    """min/max/mean/rms in the header, computed a block of images at a time.

    ``mrcfile``'s own ``update_header_stats`` makes float64 copies of the whole stack, which would make
    memory grow with the number of particles.
    """
    data = m.data
    n = data.shape[0]
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    for start in range(0, n, block):
        chunk = np.asarray(data[start : start + block], dtype=np.float64)
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
        total += float(chunk.sum())
        total_sq += float(np.square(chunk).sum())
    count = data.size
    mean = total / count
    m.header.dmin, m.header.dmax, m.header.dmean = lo, hi, mean
    m.header.rms = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))


def write_stack(path: str | Path, images: np.ndarray, pixel_size: float) -> Path:
    """Write (n, box, box) images as an MRC stack with the given header pixel size."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    with stack_writer(path, images.shape[0], images.shape[-1], pixel_size) as out:
        out[:] = images
    return Path(path)


def write_map(path: str | Path, volume: np.ndarray, pixel_size: float) -> Path:
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(np.asarray(volume, dtype=np.float32))
            m.voxel_size = pixel_size
            _label(m)
    return Path(path)

