"""A cryoSPARC server that is not there: cryosparc-tools' API client patched, as its own tests patch it.

``APIClient`` is the one object through which cryosparc-tools talks HTTP. Its constructor is replaced (no
request for the OpenAPI schema) and the namespaces the External-job code uses (``users``, ``config``,
``projects``, ``jobs``) become ``MagicMock`` class attributes, so every call cryosparc-tools makes can be
asserted with its arguments, and its controllers (``ExternalJobController`` etc.) run unchanged.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from relion_canon.io.star import write_star
from relion_canon.job import JobResult

NAMESPACES = ("users", "config", "projects", "jobs", "workspaces", "assets")
EMPIAR_CS = "formats/mixed/empiar_10076_7.cs"


def job_model(uid: str, *, inputs: dict | None = None, outputs: dict | None = None):
    """A job document as the server returns it (a real cryosparc-tools model, so its controllers accept it)."""
    from cryosparc.models.job import Job
    from cryosparc.models.job_spec import Inputs, JobSpec, Outputs, Params, ResourceSpec

    return Job(
        _id="67292e95282b26b45d0e8fee", uid=uid, uid_num=int(uid[1:]), project_uid="P1", project_uid_num=1,
        workspace_uids=["W1"], job_dir=uid, title="", status="building", status_num=5, created_by_user_id="u1",
        spec=JobSpec(type="snowflake", params=Params(), ui_tile_width=1, ui_tile_height=1, resource_spec=ResourceSpec(),
                     inputs=Inputs(root=inputs or {}), outputs=Outputs(root=outputs or {})),
        build_errors=[], job_dir_size_last_updated=datetime.now(timezone.utc),
    )


@pytest.fixture
def api(monkeypatch):
    """The patched ``APIClient`` class; set return values on e.g. ``api.jobs.create``."""
    cryosparc = pytest.importorskip("cryosparc")  # an optional extra: without it only the error path is testable
    from cryosparc.api import APIClient

    def offline_init(self, *args, **kwargs):
        self._client = mock.MagicMock(name="httpx.Client")  # what __del__ closes, whenever it runs

    monkeypatch.setattr(APIClient, "__init__", offline_init)
    for name in NAMESPACES:
        monkeypatch.setattr(APIClient, name, mock.MagicMock(name=f"api.{name}"), raising=False)
    APIClient.config.get_version.return_value = f"v{cryosparc.__version__}"  # a server the tools match
    return APIClient


@pytest.fixture
def server(api, shared_data):
    """A project P1 whose job J42 has a ``particles`` output: the 7 real EMPIAR particles (their stack is real)."""
    from cryosparc.dataset import Dataset
    from cryosparc.models.job_spec import Input, InputSlot, Output, OutputResult

    created = job_model("J43")
    with_input = job_model("J43", inputs={"input_particles": Input(
        type="particle", title="Particles",
        slots=[InputSlot(name="blob", dtype="blob", required=True),
               InputSlot(name="ctf", dtype="ctf", required=True)])})
    source = job_model("J42", outputs={"particles": Output(type="particle", title="Particles", results=[
        OutputResult(name="blob", dtype="blob"), OutputResult(name="ctf", dtype="ctf")])})
    api.jobs.create.return_value = created
    api.jobs.add_external_input.return_value = with_input
    api.jobs.find_one.return_value = source
    api.jobs.connect.return_value = with_input
    api.jobs.add_external_output.return_value = with_input
    api.jobs.mark_running.return_value = with_input
    api.jobs.load_input.return_value = Dataset.load(shared_data / EMPIAR_CS)
    # The fields the server expects of an alignments2D slot: those of a real 2D classification export.
    j2 = np.load(shared_data / "formats/cryosparc/cryosparc_J2_particles_exported.cs")
    api.jobs.get_output_fields.return_value = [f for f in j2.dtype.descr if f[0].startswith("alignments2D/")]
    api.jobs.save_output.return_value = with_input
    api.jobs.mark_completed.return_value = with_input
    api.jobs.mark_failed.return_value = with_input
    api.projects.get_directory.return_value = str(shared_data / "formats" / "mixed")
    return api


class FakePipeline:
    """Stands in for ``relion_canon.job.run_job`` (training is tested elsewhere): reads every image the
    job was given, writes a result STAR with known estimates, and remembers what it was called with."""

    def __init__(self, junk_rows=(1, 4)):
        self.junk_rows = list(junk_rows)
        self.calls: list[dict] = []

    def __call__(self, particles, out_dir, config, *, resume=True, context=None, passthrough=None):
        from relion_canon.io.source import ParticleSource

        with ParticleSource.from_star(particles) as source:  # the images must be reachable as named
            images = source.read(np.arange(len(source)))
        n = len(particles)
        flags = np.zeros(n, int)
        flags[self.junk_rows] = 1
        psi = np.linspace(-175.0, 175.0, n)
        out = particles.with_columns({
            "rlnAnglePsi": psi, "rlnAnglePsiPrior": psi, "rlnCanonDefocus": np.full(n, 1.5e4),
            "rlnParticleFigureOfMerit": np.ones(n), "rlnParticleSelectZScore": flags * 3.0, "rlnCanonIsOutlier": flags})
        if config.ref:  # what the orientation step adds: 3-D angles and priors (999 for some), the in-class psi
            from tests.io.cryosparc_files.helpers import reference_results_table

            out = reference_results_table(out)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = write_star(out, out_dir / "particles.star")
        logging.getLogger("relion_canon.job").info(f"fake pipeline on {n} particles")
        self.calls.append({"particles": particles, "config": config, "images": images})
        return JobResult(out_dir, path, path, path, out_dir / "model.pt", {}, [])


@pytest.fixture
def pipeline(monkeypatch):
    fake = FakePipeline()
    monkeypatch.setattr("relion_canon.job.run_job", fake)
    return fake
