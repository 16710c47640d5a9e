"""The STAR writer's bytes, pinned: each expected text below was written by the writer this one replaced
(starfile's block writer, called with our float format), so files written now are byte for byte the same."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from relion_canon.io.star import VERSION_31, VERSION_50, ParticleStar, read_star, write_star
from relion_canon.io.star_stream import star_chunk_writer


def _optics() -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroup": [1, 2],
        "rlnOpticsGroupName": ["opticsGroup1", "optics group 2"],
        "rlnAmplitudeContrast": [0.1, 0.07],
        "rlnSphericalAberration": [2.7, 2.7],
        "rlnVoltage": [300.0, 200.0],
        "rlnImagePixelSize": [1.244, 0.885],
        "rlnImageSize": [64, 64],
    })  # fmt: skip


def _particles(n: int = 4) -> pd.DataFrame:
    names = ["1@Extract/job007/a.mrcs", "2@Extract/job007/a b.mrcs", "", 'q"uote\'s.mrcs', "5@x.mrcs"]
    floats = [10000.0, 0.1, -1e-20, 1.2345678901234567e20, np.nan]
    return pd.DataFrame({
        "rlnImageName": names[:n],
        "rlnDefocusU": floats[:n],
        "rlnDefocusV": np.float32([9000.5, 0.1, 3.0, -0.0, 1.0])[:n],
        "rlnOpticsGroup": [1, 2, 1, 2, 1][:n],
        "rlnIsFlipped": [True, False, True, False, True][:n],
        "rlnClassNumber": pd.array([1, None, 3, 4, 5][:n], dtype="Int64"),
        "rlnMicrographName": pd.Series(["mics/m1.mrc", None, 2.5, 7, "m"][:n], dtype=object),
    })  # fmt: skip


def _relion30(path: Path) -> None:
    table = _particles().drop(columns="rlnOpticsGroup").assign(rlnVoltage=300.0, rlnMagnification=38168.0)
    write_star(ParticleStar(path, {"": table}, "", None), path)


def _relion30_images(path: Path) -> None:
    write_star(ParticleStar(path, {"images": _particles(2)}, "images", None), path)


def _relion31(path: Path) -> None:
    write_star(ParticleStar(path, {"optics": _optics(), "particles": _particles()}, "particles", 30001), path)


def _relion31_without_version_line(path: Path) -> None:
    # An optics table but no version line in the input: written as 3.1 (version 30001).
    write_star(ParticleStar(path, {"optics": _optics(), "particles": _particles(1)}, "particles", None), path)


def _relion50_with_simple_block(path: Path) -> None:
    general = {"rlnReferenceDimensionality": 3, "rlnFinalResolution": 3.25, "rlnName": "a b", "rlnEmpty": "",
               "rlnQuoted": 'x"y', "rlnTiny": 1e-300}  # fmt: skip
    blocks = {"general": general, "optics": _optics(), "particles": _particles(5)}
    write_star(ParticleStar(path, blocks, "particles", 50001), path)


def _mapping_with_version(path: Path) -> None:
    write_star({"optics": _optics(), "particles": _particles(3)}, path, version=VERSION_31)


def _mapping_without_version(path: Path) -> None:
    write_star({"particles": _particles(2)}, path)


def _empty_tables(path: Path) -> None:
    empty = _particles().iloc[:0]
    write_star({"optics": _optics().iloc[:0], "particles": empty, "nothing": pd.DataFrame(), "none": {}}, path,
               version=VERSION_50)  # fmt: skip


def _sliced(path: Path) -> None:
    blocks = {"optics": _optics(), "particles": _particles(5), "general": {"rlnNrClasses": 3}}
    star = ParticleStar(path, blocks, "particles", None)
    with star_chunk_writer(path) as write:
        for rows in ([0, 1], [2, 3], [4]):
            write(star.subset(np.array(rows)))


CASES: dict[str, Callable[[Path], None]] = {
    "relion30": _relion30,
    "relion30_images": _relion30_images,
    "relion31": _relion31,
    "relion31_without_version_line": _relion31_without_version_line,
    "relion50_with_simple_block": _relion50_with_simple_block,
    "mapping_with_version": _mapping_with_version,
    "mapping_without_version": _mapping_without_version,
    "empty_tables": _empty_tables,
    "sliced": _sliced,
}

EXPECTED: dict[str, str] = {  # fmt: skip
    'relion30': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        'data_\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnIsFlipped #4\n'
        '_rlnClassNumber #5\n'
        '_rlnMicrographName #6\n'
        '_rlnVoltage #7\n'
        '_rlnMagnification #8\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\tTrue\t1\tmics/m1.mrc\t300.0\t38168.0\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\tFalse\t<NA>\t<NA>\t300.0\t38168.0\n'
        '""\t-1e-20\t3.0\tTrue\t3\t2.5\t300.0\t38168.0\n'
        'q"uote\'s.mrcs\t1.2345678901234567e+20\t-0.0\tFalse\t4\t7\t300.0\t38168.0\n'
        '\n'
        '\n'
    ),
    'relion30_images': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        'data_images\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '\n'
        '\n'
    ),
    'relion31': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '1\topticsGroup1\t0.1\t2.7\t300.0\t1.244\t64\n'
        '2\t"optics group 2"\t0.07\t2.7\t200.0\t0.885\t64\n'
        '\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '""\t-1e-20\t3.0\t1\tTrue\t3\t2.5\n'
        'q"uote\'s.mrcs\t1.2345678901234567e+20\t-0.0\t2\tFalse\t4\t7\n'
        '\n'
        '\n'
    ),
    'relion31_without_version_line': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '1\topticsGroup1\t0.1\t2.7\t300.0\t1.244\t64\n'
        '2\t"optics group 2"\t0.07\t2.7\t200.0\t0.885\t64\n'
        '\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '\n'
        '\n'
    ),
    'relion50_with_simple_block': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_general\n'
        '\n'
        '_rlnReferenceDimensionality\t\t\t3\n'
        '_rlnFinalResolution\t\t\t3.25\n'
        '_rlnName\t\t\t"a b"\n'
        '_rlnEmpty\t\t\t""\n'
        '_rlnQuoted\t\t\tx"y\n'
        '_rlnTiny\t\t\t1e-300\n'
        '\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '1\topticsGroup1\t0.1\t2.7\t300.0\t1.244\t64\n'
        '2\t"optics group 2"\t0.07\t2.7\t200.0\t0.885\t64\n'
        '\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '""\t-1e-20\t3.0\t1\tTrue\t3\t2.5\n'
        'q"uote\'s.mrcs\t1.2345678901234567e+20\t-0.0\t2\tFalse\t4\t7\n'
        '5@x.mrcs\t<NA>\t1.0\t1\tTrue\t5\tm\n'
        '\n'
        '\n'
    ),
    'mapping_with_version': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '1\topticsGroup1\t0.1\t2.7\t300.0\t1.244\t64\n'
        '2\t"optics group 2"\t0.07\t2.7\t200.0\t0.885\t64\n'
        '\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '""\t-1e-20\t3.0\t1\tTrue\t3\t2.5\n'
        '\n'
        '\n'
    ),
    'mapping_without_version': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '\n'
        '\n'
    ),
    'empty_tables': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_nothing\n'
        '\n'
        'loop_\n'
        '\n'
        '\n'
        '# version 50001\n'
        '\n'
        'data_none\n'
        '\n'
        '\n'
        '\n'
    ),
    'sliced': (
        '\n'
        '# Created by relion_canon\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_optics\n'
        '\n'
        'loop_\n'
        '_rlnOpticsGroup #1\n'
        '_rlnOpticsGroupName #2\n'
        '_rlnAmplitudeContrast #3\n'
        '_rlnSphericalAberration #4\n'
        '_rlnVoltage #5\n'
        '_rlnImagePixelSize #6\n'
        '_rlnImageSize #7\n'
        '1\topticsGroup1\t0.1\t2.7\t300.0\t1.244\t64\n'
        '2\t"optics group 2"\t0.07\t2.7\t200.0\t0.885\t64\n'
        '\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_particles\n'
        '\n'
        'loop_\n'
        '_rlnImageName #1\n'
        '_rlnDefocusU #2\n'
        '_rlnDefocusV #3\n'
        '_rlnOpticsGroup #4\n'
        '_rlnIsFlipped #5\n'
        '_rlnClassNumber #6\n'
        '_rlnMicrographName #7\n'
        '1@Extract/job007/a.mrcs\t10000.0\t9000.5\t1\tTrue\t1\tmics/m1.mrc\n'
        '"2@Extract/job007/a b.mrcs"\t0.1\t0.10000000149011612\t2\tFalse\t<NA>\t<NA>\n'
        '""\t-1e-20\t3.0\t1\tTrue\t3\t2.5\n'
        'q"uote\'s.mrcs\t1.2345678901234567e+20\t-0.0\t2\tFalse\t4\t7.0\n'
        '5@x.mrcs\t<NA>\t1.0\t1\tTrue\t5\tm\n'
        '\n'
        '\n'
        '# version 30001\n'
        '\n'
        'data_general\n'
        '\n'
        '_rlnNrClasses\t\t\t3\n'
        '\n'
        '\n'
    ),
}

REAL_FILES = [
    "relion/relion31.star",
    "relion/relion31.6opticsgroups.star",
    "relion/relion5.star",
    "relion/FinalRefinement-OriginalParticles-PfCRT.star",
    "relion/rln_proj_65.star",
    "mixed/empiar_10076_7.star",
]
EXPECTED_SHA256: dict[str, str] = {
    'relion/relion31.star': '5884b597e2233dedf9cfeeaccea27feb8e1a3b95a2c7201f1e6ee393d4b669e7',
    'relion/relion31.6opticsgroups.star': 'b3f9b411852d25f262a5c0d9d4b0607caca29422185a8dc92df4380e69c49948',
    'relion/relion5.star': 'a303b55e18f80c5b0c13cfd1a5104874f4b8f9464727582883c36f371d44f606',
    'relion/FinalRefinement-OriginalParticles-PfCRT.star': '8fdbd2ac5876a370d24a2fde872a616db6682423ad8ac49b7f798b28eaee893c',
    'relion/rln_proj_65.star': '85188cf73b8be18742a6df3917ba1987e99e9d02ca38d951c1853a4f83693fef',
    'mixed/empiar_10076_7.star': 'a30d8ce691aaf9cb1ee70595bb1e9bacf98a0b0378f36f81aa2ef45d85630772',
}


@pytest.mark.parametrize("name", CASES)
def test_written_bytes_are_the_pinned_text(tmp_path, name):
    path = tmp_path / f"{name}.star"
    CASES[name](path)
    assert path.read_bytes() == EXPECTED[name].encode()


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_written_back_as_pinned(shared_data, tmp_path, name):
    star = read_star(shared_data / "formats" / name)
    out = write_star(star, tmp_path / "out.star")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == EXPECTED_SHA256[name]
