"""``.csg`` result groups: the YAML that lets cryoSPARC's "Import Result Group" job take a ``.cs`` we wrote."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import numpy as np

from relion_canon.io.atomic import atomic_path
from relion_canon.io.cryosparc_files.format import cryosparc_tools_version
from relion_canon.io.cryosparc_files.layout import CANON_SLOT


def slot_types(records: np.ndarray) -> dict[str, str]:
    """cryoSPARC slot -> result type for a ``.csg``; our own slot is left out (no cryoSPARC job knows its type)."""
    out: dict[str, str] = {}
    for name in records.dtype.names:
        if "/" not in name:
            continue
        slot = name.split("/", 1)[0]
        if slot == CANON_SLOT or slot in out:
            continue
        dtype = "alignments3D" if re.match(r"^alignments_class_\d+$", slot) else slot
        out[slot] = f"particle.{dtype}"
    return out


def _yaml_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def csg_text(metafile: str, records: np.ndarray, name: str, title: str, description: str,
             created: datetime.datetime | None = None) -> str:
    """The YAML of a ``.csg`` result group whose every slot lives in ``metafile`` (relative to the ``.csg``)."""
    created = created or datetime.datetime.now()
    lines = [
        f"created: {created.strftime('%Y-%m-%d %H:%M:%S.%f')}",
        "group:",
        f"  description: {_yaml_str(description)}",
        f"  name: {name}",
        f"  title: {_yaml_str(title)}",
        "  type: particle",
        "results:",
    ]
    for slot, kind in slot_types(records).items():
        lines += [f"  {slot}:", f"    metafile: {_yaml_str('>' + metafile)}", f"    num_items: {len(records)}",
                  f"    type: {kind}"]
    version = cryosparc_tools_version()
    if version:
        lines.append(f"version: v{version}")
    return "\n".join(lines) + "\n"


def write_csg(path: str | Path, cs_path: str | Path, records: np.ndarray, name: str, title: str,
              description: str) -> Path:
    """Write the ``.csg`` that lets cryoSPARC's "Import Result Group" job take ``cs_path`` (same folder)."""
    path = Path(path)
    text = csg_text(os.path.relpath(cs_path, path.parent), records, name, title, description)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
