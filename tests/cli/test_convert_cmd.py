"""`relion-canon convert`: .cs -> STAR (+ .mrcs links RELION reads) and back, and one-line errors."""

from __future__ import annotations

import mrcfile
import numpy as np
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star

EMPIAR = "formats/mixed/empiar_10076_7"
J24 = "formats/cryosparc/cryosparc_P12_J24_001_particles.cs"


def _run(*args):
    return CliRunner().invoke(cli, ["convert", *[str(a) for a in args]])


def test_cs_to_star_that_relion_reads(shared_data, tmp_path):
    res = _run("--i", shared_data / f"{EMPIAR}.cs", "--o", tmp_path / "particles.star")
    assert res.exit_code == 0, res.output
    star = read_star(tmp_path / "particles.star")
    assert all(name.split("@")[1].endswith(".mrcs") for name in star.image_names)
    with ParticleSource.from_star(star) as source, mrcfile.open(shared_data / f"{EMPIAR}.mrc") as m:
        np.testing.assert_array_equal(source.read(np.arange(7)), m.data)
    np.testing.assert_array_equal(star.particles["rlnDefocusU"], read_star(shared_data / f"{EMPIAR}.star")
                                  .particles["rlnDefocusU"])


def test_star_to_cs_with_its_csg(shared_data, tmp_path):
    res = _run("--i", shared_data / f"{EMPIAR}.star", "--o", tmp_path / "particles.cs")
    assert res.exit_code == 0, res.output
    made, real = np.load(tmp_path / "particles.cs"), np.load(shared_data / f"{EMPIAR}.cs")
    np.testing.assert_array_equal(made["ctf/df1_A"], real["ctf/df1_A"])
    np.testing.assert_array_equal(made["blob/shape"], real["blob/shape"])  # from the stack: no rlnImageSize in 3.0
    assert "metafile: '>particles.cs'" in (tmp_path / "particles.csg").read_text()


def test_metadata_only_with_keep_names(shared_data, tmp_path):
    res = _run("--i", shared_data / J24, "--o", tmp_path / "j24.star", "--keep-names")
    assert res.exit_code == 0, res.output
    p = read_star(tmp_path / "j24.star").particles
    assert len(p) == 2019 and {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnCanonUid"} <= set(p.columns)
    assert p["rlnImageName"][0].startswith("000001@J19/extract/")


def test_missing_stacks_one_line_error_and_no_output(shared_data, tmp_path):
    res = _run("--i", shared_data / J24, "--o", tmp_path / "j24.star")
    assert res.exit_code == 2
    assert res.stderr.strip().startswith(f"relion-canon: error: {shared_data / J24}, row 1: stack J19/extract/")
    assert "give --project-dir" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "j24.star").exists()


def test_both_sides_the_same_kind(shared_data, tmp_path):
    res = _run("--i", shared_data / f"{EMPIAR}.cs", "--o", tmp_path / "copy.cs")
    assert res.exit_code == 2 and "give a .cs and a .star" in res.stderr
