""".csg result groups: every cryoSPARC slot of the .cs, in YAML that cryoSPARC reads."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.io import cryosparc_files as C
from tests.io.cryosparc_files.helpers import J2, results_table


def test_csg_lists_every_cryosparc_slot_of_its_cs(shared_data, tmp_path):
    yaml = pytest.importorskip("yaml")
    records = C.load_cs(shared_data / J2)
    out = C.results_to_records(records, results_table(C.records_to_star(records, shared_data / J2)))
    cs = C.save_cs(out, tmp_path / "particles.cs")
    csg = C.write_csg(tmp_path / "particles.csg", cs, out, "particles", "All particles", "it's a test")
    doc = yaml.safe_load(csg.read_text())
    assert doc["group"] == {"name": "particles", "title": "All particles", "type": "particle",
                            "description": "it's a test"}
    assert set(doc["results"]) == {"blob", "ctf", "alignments2D"}  # not our own slot: no cryoSPARC type for it
    for slot, entry in doc["results"].items():
        assert entry == {"metafile": ">particles.cs", "num_items": 22, "type": f"particle.{slot}"}
    back = np.load(cs)  # NUMPY format, as cryoSPARC reads it
    assert back.dtype == out.dtype and (back == out).all()
