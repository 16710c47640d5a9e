"""Run the job on particles of a cryoSPARC project, as a cryoSPARC External job made with cryosparc-tools.

The steps, as cryoSPARC's documentation for External jobs prescribes:

1. connect, and refuse a cryosparc-tools whose major.minor differs from the server's (the API changes
   between versions; the message says which version to install);
2. ``create_external_job`` in the workspace; ``add_input`` (particles with ``blob`` and ``ctf``) connected to
   the source output, e.g. ``J42.particles``; ``add_output`` for all, kept and rejected particles, each with
   an ``alignments2D`` slot and everything else passed through from the input;
3. inside ``job.run()`` (cryoSPARC shows the job running, and failed with the traceback if anything
   raises): ``load_input``, run :func:`relion_canon.job.run_job` on it, then ``alloc_output`` +
   ``save_output`` for each output, with ``alignments2D/pose`` from our in-plane angle in the class frame.

With a reference map (``--ref``) the outputs also get an ``alignments3D`` slot (the 3-D pose, shift and pixel
size, :func:`relion_canon.io.cryosparc_files.fill_alignments3d`; zero for particles without a 3-D orientation),
and a fourth output, ``particles_posed``: the kept particles that have one, the input for Local Refinement.

Our other estimates (defocus, weight, outlier score) have no cryoSPARC slot type, so the server outputs
carry only the split and the angle; the local output folder gets the full ``.cs`` files (fields
``relion_canon/*``) with their ``.csg``, the model, the STAR files and the figures.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as csio
from relion_canon.io.output_dir import output_folder, stack_files
from relion_canon.io.particles import RESULT_GROUPS, write_results_cs
from relion_canon.io.star import read_star
from relion_canon.job import JobConfig, JobResult

INPUT_NAME = "input_particles"
INPUT_SLOTS = ["blob", "ctf"]
OUTPUT_SLOTS = ["alignments2D"]
REFERENCE_SLOTS = ["alignments2D", "alignments3D"]  # with a reference map
OUTPUTS = (  # (output name, title, which particles)
    ("particles", "All particles", "all"),
    ("particles_selected", "Particles kept", "kept"),
    ("particles_rejected", "Particles rejected as junk", "rejected"),
)
POSED_OUTPUT = ("particles_posed", "Kept particles with a 3-D pose", "posed")  # with a reference map
# The .cs/.csg results written locally beside run_job's own (checked against the inputs before any work).
LOCAL_OUTPUTS = tuple(f"{stem}{suffix}" for stem, *_ in RESULT_GROUPS for suffix in (".cs", ".csg"))
DEFAULT_TITLE = "relion_canon: in-plane angle, defocus, weight, junk"
DESCRIPTION = ("Per-particle in-plane angle (alignments2D/pose), defocus, weight and junk status learned by "
               "relion_canon from the particles themselves; outputs: all, kept and rejected particles. With a "
               "reference map also 3-D poses (alignments3D) and the kept particles that have one.")
_INPUT_REF = re.compile(r"^(J\d+)\.([A-Za-z][A-Za-z0-9_]*)$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
log = logging.getLogger(__name__)


@dataclass
class CryosparcJobResult:
    project_uid: str
    job_uid: str
    saved: dict[str, int]  # output name -> particles saved to it
    job: JobResult  # what the pipeline wrote locally
    files: list[Path] = field(default_factory=list)  # local .cs / .csg results


def _tools():
    """The cryosparc-tools package, or a clear error saying how to install it."""
    try:
        import cryosparc
        import cryosparc.tools  # noqa: F401  (the server API; fails on a broken install)
    except ImportError as exc:
        raise InputError(f"the cryoSPARC server route needs cryosparc-tools ({exc}): {csio.INSTALL_HINT}") from None
    return cryosparc


def parse_input_ref(ref: str) -> tuple[str, str]:
    """``"J42.particles"`` -> ``("J42", "particles")``."""
    m = _INPUT_REF.match(ref.strip())
    if not m:
        raise InputError(f"--input {ref!r}: expected JOB.OUTPUT, e.g. J42.particles or J17.particles_selected")
    return m.group(1), m.group(2)


def check_versions(tools_version: str, server_version: str | None, url: str) -> None:
    """Refuse a cryosparc-tools whose major.minor is not the server's (a development build gives no number)."""
    m = _VERSION.match(server_version or "")
    if not m:
        return
    want = f"{m.group(1)}.{m.group(2)}"
    have = ".".join(tools_version.split(".")[:2])
    if want != have:
        raise InputError(f"cryoSPARC at {url} is {server_version}, but cryosparc-tools {tools_version} is installed "
                         f"and must match it: pip install 'cryosparc-tools~={want}.0'")


def _server_version(cs: Any) -> str | None:
    try:
        api = getattr(cs, "api", None)
        if api is not None and hasattr(api, "config"):
            return api.config.get_version()  # cryosparc-tools 5
        return cs.cli.get_running_version()  # cryosparc-tools 4
    except Exception:
        return None


def connect(url: str, email: str | None = None, password: str | None = None) -> Any:
    """A ``cryosparc.tools.CryoSPARC`` session, checked to match the server's version.

    Credentials default to ``CRYOSPARC_EMAIL`` / ``CRYOSPARC_PASSWORD``, then to a session saved by
    ``python -m cryosparc.tools login``.
    """
    tools = _tools()
    from cryosparc.tools import CryoSPARC

    version = str(tools.__version__)
    major = _VERSION.match(version)
    email = email or os.getenv("CRYOSPARC_EMAIL")
    password = password or os.getenv("CRYOSPARC_PASSWORD")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its version warning: check_versions says it as an error, below
            if major is None or int(major.group(1)) >= 5:
                cs = CryoSPARC(url, email=email, password=password)
            else:  # cryosparc-tools 4 takes host and port, and the licence id
                parts = urllib.parse.urlsplit(url)
                cs = CryoSPARC(license=os.getenv("CRYOSPARC_LICENSE_ID"), host=parts.hostname or "localhost",
                               base_port=parts.port or 39000, email=email, password=password)
    except ValueError as exc:
        raise InputError(f"no cryoSPARC login for {url}: give --email and --password (or CRYOSPARC_EMAIL / "
                         f"CRYOSPARC_PASSWORD), or log in once with `python -m cryosparc.tools login --url {url}` "
                         f"({_first_line(exc)})") from None
    except Exception as exc:  # cryosparc-tools wraps connection and API errors in RuntimeError
        cause = exc.__cause__ or exc
        raise InputError(f"cannot connect to cryoSPARC at {url} ({_first_line(cause)}); check the URL, your "
                         f"login, and that cryosparc-tools {version} suits this cryoSPARC") from None
    check_versions(version, _server_version(cs), url)
    return cs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _project_dir(project: Any) -> str:
    value = project.dir  # a path property in cryosparc-tools 5 (callable too, deprecated), a method in 4
    return str(value if isinstance(value, (str, PurePath)) else value())


def run_external_job(
    url: str,
    project_uid: str,
    workspace_uid: str,
    input_ref: str,
    out_dir: str | Path,
    config: JobConfig = JobConfig(),
    email: str | None = None,
    password: str | None = None,
    project_dir: str | Path | None = None,
    title: str = DEFAULT_TITLE,
) -> CryosparcJobResult:
    """Create a cryoSPARC External job on ``input_ref`` (e.g. ``"J42.particles"``), run the job, save its outputs.

    ``project_dir`` is where the cryoSPARC project is on this machine (default: where the server says it is),
    for reading the particle images. ``out_dir`` is a local folder for everything the pipeline writes. The
    job's lines go to the job's event log in cryoSPARC, and wherever the caller's ``log_to`` sends them.
    """
    from relion_canon.context import RunContext
    from relion_canon.logs import log_to
    from relion_canon.job import run_job

    cs = connect(url, email, password)
    project = cs.find_project(project_uid)
    # The local folder is held before a job is made on the server: a folder another job is writing is refused
    # first. Its results are kept only if the whole job, the server's outputs included, succeeds.
    with output_folder(out_dir, outputs=LOCAL_OUTPUTS) as folder:
        job = _create_job(project, project_uid, workspace_uid, title, input_ref, bool(config.ref))
        log.info(f"Created External job {project_uid} {job.uid} on {input_ref}")
        with job.run(), log_to(job.log):
            particles = job.load_input(INPUT_NAME, slots="all")
            records = csio.as_records(particles)
            where = Path(project_dir) if project_dir is not None else Path(_project_dir(project))
            star = csio.records_to_star(records, Path(project_uid) / input_ref, project_dir=where)
            folder.protect(stack_files(star, where))
            result = run_job(star, out_dir, config, context=RunContext(progress=False))
            results = read_star(result.particles_star)
            files = write_results_cs(records, None, results, out_dir)
            saved = _save_outputs(job, particles, records, results, result.particles_star)
            log.info(f"Saved {saved['particles']} particles: {saved['particles_selected']} kept, "
                     f"{saved['particles_rejected']} rejected")
    return CryosparcJobResult(project_uid, job.uid, saved, result, files)


def _outputs(with_reference: bool) -> tuple[tuple[str, str, str], ...]:
    return OUTPUTS + ((POSED_OUTPUT,) if with_reference else ())


def _create_job(project: Any, project_uid: str, workspace_uid: str, title: str, input_ref: str,
                with_reference: bool = False) -> Any:
    """A new External job in the workspace, its particle input connected to ``input_ref``, its outputs (all,
    kept, rejected; with a reference map also posed) passing the input's other fields through."""
    source_job, source_output = parse_input_ref(input_ref)
    job = project.create_external_job(workspace_uid, title=title, desc=DESCRIPTION)
    job.add_input(type="particle", name=INPUT_NAME, min=1, max=1, slots=INPUT_SLOTS, title="Particles")
    try:
        job.connect(INPUT_NAME, source_job, source_output)
    except ValueError as exc:  # e.g. "Source job J42 does not have output particles"
        raise InputError(f"cannot connect {project_uid} {input_ref} to the new job {job.uid}: {exc}") from None
    slots = REFERENCE_SLOTS if with_reference else OUTPUT_SLOTS
    for name, output_title, _ in _outputs(with_reference):
        job.add_output(type="particle", name=name, slots=slots, passthrough=INPUT_NAME, title=output_title)
    return job


def _save_outputs(job: Any, particles: Any, records: np.ndarray, results: Any, results_path: Path) -> dict[str, int]:
    """Our in-plane angle, origins, junk flags (and with a reference map the 3-D poses) in the input's row order,
    saved as the outputs; the particles saved to each."""
    # The pipeline keeps the input's row order, but the uid is what says so.
    pos = csio.result_positions(records, results)
    if len(pos) != len(records):
        raise InputError(f"{len(pos)} results for {len(records)} input particles", results_path)
    p = results.particles
    psi = np.empty(len(records))
    psi[pos] = csio.in_plane_psi(p)
    origins = np.empty((len(records), 2))
    origins[pos] = results.origins_angstrom()
    junk = np.zeros(len(records), bool)
    junk[pos] = p["rlnCanonIsOutlier"].to_numpy(np.float64) > 0.5
    with_reference = csio.CLASS_PSI_COLUMN in p.columns
    euler = np.zeros((len(records), 3))
    posed = np.zeros(len(records), bool)
    if with_reference:
        euler[pos] = p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
        posed[pos] = csio.posed_rows(p)
    saved: dict[str, int] = {}
    for name, _, which in _outputs(with_reference):
        rows = {"all": np.ones(len(records), bool), "kept": ~junk, "rejected": junk, "posed": ~junk & posed}[which]
        out = job.alloc_output(name, particles.mask(rows))
        csio.fill_alignments2d(out, records[rows], psi[rows], origins[rows])
        if with_reference:
            csio.fill_alignments3d(out, records[rows], euler[rows], posed[rows], origins[rows])
        job.save_output(name, out)
        saved[name] = int(rows.sum())
    return saved
