"""Model files and training checkpoints: plain tensors and JSON-able values, loaded with ``weights_only=True``.

A *model file* (``model.pt``) is what ``predict`` needs: weights, the model's full config, the preprocessing
it was trained with (box, pixel size, normalisation) and the metric history. A *checkpoint*
(``checkpoint.pt``) adds what resuming needs: optimiser and scaler states, the step counters and the RNG
state. Both are written atomically, so a kill mid-write leaves the previous file intact; neither ever
needs unpickling of arbitrary objects.
"""

from __future__ import annotations

import io

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path

FORMAT = "relion_canon.model"
FORMAT_VERSION = 1
# What a checkpoint holds beyond its model file: only resuming needs these.
RESUME_KEYS = ("global_step", "optimizers", "scaler", "rng")


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically with the format header."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "relion_canon_version": __version__, **payload}
    with atomic_path(path) as tmp:
        # Serialised in memory, then written as plain bytes: a full disk or a file-size limit then raises
        # OSError (ENOSPC, EFBIG), which atomic_path reports in one line; torch's own writer, even into a
        # Python file, turns it into "unexpected pos ... vs ...".
        buffer = io.BytesIO()
        torch.save(data, buffer)
        Path(tmp).write_bytes(buffer.getvalue())
    return Path(path)


def save_model_from_checkpoint(checkpoint_path: str | Path, model_path: str | Path) -> Path:
    """Write the model file that goes with a checkpoint (what training writes beside it at the same epoch).

    A job resumed from a finished checkpoint trains no epoch, so it writes no model file of its own; the one an
    interrupted run wrote was removed with that run's other partial results.
    """
    state = load(checkpoint_path)
    header = ("format", "format_version", "relion_canon_version")
    return save(model_path, {k: v for k, v in state.items() if k not in RESUME_KEYS and k not in header})


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a model file or checkpoint; refuse anything that is not one of ours, naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise InputError("model file not found", path)
    if not zipfile.is_zipfile(path):
        raise InputError("not a readable model file (not a PyTorch archive written by torch.save)", path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any object that is not a tensor or a plain container: a crafted pickle lands here.
        raise InputError(f"refusing to load: it holds objects other than tensors and plain values ({_why(exc)})", path) from None
    except Exception as exc:
        raise InputError(f"not a readable model file ({type(exc).__name__}: {_first_line(exc)})", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError("not a relion_canon model file", path)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"model file format {version} is not supported by relion_canon {__version__} (expects {FORMAT_VERSION}); "
            "retrain or use the version that wrote it",
            path,
        )
    return data


def _why(exc: Exception) -> str:
    """The line of torch's long weights_only message that names the refused object."""
    for line in str(exc).splitlines():
        if "Unsupported" in line:
            return line.split("error:", 1)[-1].split(" was not")[0].strip()
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
