"""Reading and writing .cs files: the NUMPY and CSDAT formats, with and without cryosparc-tools, bad input."""

from __future__ import annotations

import sys

import pytest

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from tests.io.cryosparc_files.helpers import J2


@pytest.fixture
def no_cryosparc_tools(monkeypatch):
    """Make `import cryosparc` fail, as on a machine without the optional extra."""
    for name in [m for m in sys.modules if m == "cryosparc" or m.startswith("cryosparc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryosparc", None)
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)


@pytest.mark.parametrize("content, what", [(b"", "empty"), (b"data_\nloop_\n", "neither NumPy nor CSDAT")])
def test_not_a_cs_file(tmp_path, content, what):
    (tmp_path / "x.cs").write_bytes(content)
    with pytest.raises(InputError, match=what):
        C.load_cs(tmp_path / "x.cs")


def test_csdat_format_reads_like_numpy_format(shared_data, tmp_path):
    dataset = pytest.importorskip("cryosparc.dataset")
    dset = dataset.Dataset.load(shared_data / J2)
    dset.save(tmp_path / "J2_csdat.cs", format=dataset.CSDAT_FORMAT)
    assert (tmp_path / "J2_csdat.cs").read_bytes()[:6] == C.CSDAT_MAGIC
    a = C.read_cs(tmp_path / "J2_csdat.cs").particles
    b = C.read_cs(shared_data / J2).particles
    assert a.drop(columns="rlnImageName").equals(b.drop(columns="rlnImageName"))


def test_without_cryosparc_tools_numpy_reads_and_csdat_is_refused(shared_data, tmp_path, no_cryosparc_tools):
    plain = C.load_cs(shared_data / J2)
    assert plain.dtype["blob/path"].kind == "S" and len(plain) == 22
    (tmp_path / "x.cs").write_bytes(C.CSDAT_MAGIC + b"\x00" * 64)
    with pytest.raises(InputError, match=r"CSDAT format, which needs cryosparc-tools: pip install"):
        C.load_cs(tmp_path / "x.cs")
