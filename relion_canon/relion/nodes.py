"""``RELION_OUTPUT_NODES.star``: the outputs a job hands to RELION's pipeline, typed for the running version.

RELION reads this file once, when it first sees ``RELION_JOB_EXIT_SUCCESS``. Version 3.1 reads only the
integer ``_rlnPipeLineNodeType``; 4.0 and 5.0 read only the string ``_rlnPipeLineNodeTypeLabel`` (an
int-only file gives them an empty type; a label-only file makes 3.1 register the node as movies). So 3.1
gets the integer alone: 3.1 does not know the label column and warns about it ("will ignore (but maintain)
values for the unknown label: rlnPipeLineNodeTypeLabel"), which its GUI shows in red. 4.0 and 5.0 get
both columns (both labels exist there), the label being the running version's: 5.0 renamed the labels and
does not convert them in this file, so a 4.0 label under 5.0 keeps the node out of the 5.0 particle browsers.
Node names are project-relative paths (the job runs from the project directory).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Iterable

from relion_canon.io.atomic import atomic_path
from relion_canon.relion.exit_files import OUTPUT_NODES
from relion_canon.relion.job_star import VERSIONS


class NodeKind(enum.Enum):
    PARTICLES = "particles"
    IMAGES_2D = "images2d"
    DENSITY_MAP = "map"
    MASK_3D = "mask"
    LOGFILE = "logfile"
    CLASS_MODEL = "model"  # 3.1 only: what its Select job takes classes from (4.0 and 5.0 take the optimiser)
    OPTIMISER = "optimiser"


# kind → (3.1 int, 4.0 label, 5.0 label); from pipeline_jobs.h of RELION 3.1.3, 4.0.1 and 5.0.1. None: that
# version has no such type.
_NODE_TYPES: dict[NodeKind, tuple[int, str | None, str | None]] = {
    NodeKind.PARTICLES: (3, "ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    NodeKind.IMAGES_2D: (5, "ImagesData.star.relion", "Image2DGroupMetadata.star.relion"),
    NodeKind.DENSITY_MAP: (6, "DensityMap.mrc", "DensityMap.mrc"),
    NodeKind.MASK_3D: (7, "Mask3D.mrc", "Mask3D.mrc"),
    NodeKind.LOGFILE: (13, "LogFile.pdf.relion", "LogFile.pdf.relion"),
    NodeKind.CLASS_MODEL: (8, None, None),
    NodeKind.OPTIMISER: (9, "ProcessData.star.relion.optimiser", "OptimiserData.star.relion"),
}


def node_type_int(kind: NodeKind) -> int:
    return _NODE_TYPES[kind][0]


def node_type_label(kind: NodeKind, version: str) -> str:
    """The type label RELION ``version`` (4.0 or 5.0) files this kind of node under; 3.1 has none."""
    if version not in VERSIONS:
        raise ValueError(f"unknown RELION version {version!r}; one of {', '.join(VERSIONS)}")
    if version == "3.1":
        raise ValueError("RELION 3.1 types nodes by number only (node_type_int)")
    _, label40, label50 = _NODE_TYPES[kind]
    label = label50 if version == "5.0" else label40
    if label is None:
        raise ValueError(f"RELION {version} has no node type for a {kind.value} node")
    return label


def write_output_nodes(out_dir: str | Path, nodes: Iterable[tuple[str, NodeKind]], version: str) -> Path:
    """Write ``RELION_OUTPUT_NODES.star`` into ``out_dir`` (atomically) for (project-relative name, kind) pairs."""
    if version not in VERSIONS:
        raise ValueError(f"unknown RELION version {version!r}; one of {', '.join(VERSIONS)}")
    nodes = list(nodes)
    if not nodes:
        raise ValueError("no output nodes to write")
    for name, _ in nodes:
        if not name or any(c.isspace() for c in name):
            # RELION's STAR reader splits on whitespace: such a name would corrupt the pipeline.
            raise ValueError(f"output node name {name!r} is empty or contains white space")
    with_label = version != "3.1"
    rows = [(name, node_type_int(kind), node_type_label(kind, version) if with_label else "") for name, kind in nodes]
    star_version = 50001 if version == "5.0" else 30001
    width = max(len(name) for name, _, _ in rows)
    columns = ["_rlnPipeLineNodeName #1", "_rlnPipeLineNodeType #2"]
    if with_label:
        columns.append("_rlnPipeLineNodeTypeLabel #3")
    lines = [
        f"# version {star_version}",
        "",
        "data_output_nodes",
        "",
        "loop_",
        *columns,
        *(f"{name:<{width}} {number:>3} {label}".rstrip() for name, number, label in rows),
        "",
    ]
    path = Path(out_dir) / OUTPUT_NODES
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
