"""The ``job.star`` RELION writes into the job folder before launching an External job, and RELION's version.

What the executable needs from it: whether the user pressed "Continue" (``_rlnJobIsContinue 1``; RELION
re-runs the very same command, so this file is the only signal) and which RELION wrote it, because the
output-node labels differ between 3.1, 4.0 and 5.0:

* 5.0: STAR files start with ``# version 50001``;
* 4.0: ``# version 30001`` and a ``_rlnJobTypeLabel`` (``relion.external``);
* 3.1: ``# version 30001`` and an integer ``_rlnJobType`` (99 = External).

The parser is a small one of its own: job options are ``name value`` rows whose values RELION double-quotes
when they hold spaces (``other_args "--gpu 0"``) and writes as ``""`` when empty.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from relion_canon.errors import InputError

VERSIONS = ("3.1", "4.0", "5.0")
JOB_STAR = "job.star"
DEFAULT_PIPELINE = "default_pipeline.star"

_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)")


@dataclass
class JobStar:
    path: Path
    version: str  # "3.1", "4.0" or "5.0"
    is_continue: bool
    job_type: str  # "99" (3.1) or "relion.external" (4.0, 5.0)
    options: dict[str, str] = field(default_factory=dict)  # job option variable → value ("" when empty)


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, posix=True)
    except ValueError:  # an unbalanced quote in a user's value: fall back to whitespace
        return line.split()


def parse_star_text(text: str) -> tuple[int | None, dict[str, dict[str, str]], dict[str, list[list[str]]]]:
    """(first ``# version`` number, simple ``_label value`` pairs per block, loop rows per block) of a STAR text.

    Only what ``job.star`` and ``default_pipeline.star`` use: simple blocks and loops of plain tokens.
    """
    version: int | None = None
    pairs: dict[str, dict[str, str]] = {}
    loops: dict[str, list[list[str]]] = {}
    block = ""
    in_loop = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _VERSION_RE.match(line)
            if match and version is None:
                version = int(match.group(1))
            continue
        if line.startswith("data_"):
            block, in_loop = line[5:], False
            pairs.setdefault(block, {})
            continue
        if line.startswith("loop_"):
            in_loop = True
            loops.setdefault(block, [])
            continue
        if line.startswith("_"):
            parts = _tokens(line)
            if not in_loop:
                pairs.setdefault(block, {})[parts[0]] = parts[1] if len(parts) > 1 else ""
            continue
        if in_loop:
            loops[block].append(_tokens(line))
    return version, pairs, loops


def read_job_star(path: str | Path) -> JobStar:
    """Read a job folder's ``job.star`` (or the file itself); :class:`InputError` when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / JOB_STAR
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read job.star ({exc.strerror})", path) from None
    version_number, pairs, loops = parse_star_text(text)
    job = pairs.get("job")
    if job is None:
        raise InputError("not a RELION job.star (no data_job block)", path)
    if version_number is not None and version_number >= 50001:
        version = "5.0"
    elif "_rlnJobTypeLabel" in job:
        version = "4.0"
    elif "_rlnJobType" in job:
        version = "3.1"
    else:
        raise InputError("not a RELION job.star (neither _rlnJobType nor _rlnJobTypeLabel)", path)
    job_type = job.get("_rlnJobTypeLabel", job.get("_rlnJobType", ""))
    is_continue = job.get("_rlnJobIsContinue", "0").strip() not in ("0", "", "false", "False")
    options = {row[0]: (row[1] if len(row) > 1 else "") for row in loops.get("joboptions_values", []) if row}
    return JobStar(path, version, is_continue, job_type, options)


def version_from_pipeline(path: str | Path) -> str | None:
    """The RELION version that wrote a ``default_pipeline.star``, when its tables tell (None otherwise)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    version_number, _, _ = parse_star_text(text)
    if version_number is not None and version_number >= 50001:
        return "5.0"
    if "_rlnPipeLineProcessTypeLabel" in text or "_rlnPipeLineNodeTypeLabel" in text:
        return "4.0"
    if "_rlnPipeLineProcessType" in text or "_rlnPipeLineNodeType" in text:
        return "3.1"
    return None


def normalise_version(text: str) -> str:
    """'3', '3.1', '3.1.3', '4', '5.0.1', ... → '3.1' / '4.0' / '5.0'."""
    major = text.strip().split(".")[0]
    mapping = {"3": "3.1", "4": "4.0", "5": "5.0"}
    if major not in mapping:
        raise InputError(f"RELION version must be 3.1, 4.0 or 5.0, got {text!r}")
    return mapping[major]


def detect_relion_version(
    out_dir: str | Path, project_dir: str | Path = ".", explicit: str | None = None
) -> tuple[str, str]:
    """(version, how it was found): an explicit choice, else the job's ``job.star``, else the project's
    ``default_pipeline.star``, else 4.0 (whose labels are also what 5.0 converts old pipelines from)."""
    if explicit:
        return normalise_version(explicit), "given with --relion_version"
    job_star = Path(out_dir) / JOB_STAR
    if job_star.exists():
        try:
            return read_job_star(job_star).version, str(job_star)
        except InputError:
            pass
    pipeline = Path(project_dir) / DEFAULT_PIPELINE
    found = version_from_pipeline(pipeline)
    if found:
        return found, str(pipeline)
    return "4.0", "default (no job.star or default_pipeline.star tells)"
