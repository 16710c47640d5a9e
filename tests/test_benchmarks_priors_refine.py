"""benchmarks/priors_refine: its scoring on hand-made cases and the RELION commands it runs. The benchmark itself
is not run here: even at smoke size (161 particles, 32 px) a global 3D auto-refine took 13 minutes on the shared
2-core machine; tests/relion/test_priors_in_relion.py is the quick proof that RELION reads the priors."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "priors_refine"))
import priors_accuracy as pa  # noqa: E402

# Under its own name: other benchmarks have a run.py too.
_spec = importlib.util.spec_from_file_location("priors_refine_run", REPO / "benchmarks" / "priors_refine" / "run.py")
refine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refine)


def _tables(prior: np.ndarray, true: np.ndarray, junk: np.ndarray):
    names = [f"{i:06d}@s.mrcs" for i in range(len(prior))]
    table = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": 1,
                          **{c: prior[:, i] for i, c in enumerate(pa.ANGLE_COLUMNS)},
                          **{c: prior[:, i] for i, c in enumerate(pa.PRIOR_COLUMNS)}})
    truth = pd.DataFrame({"rlnImageName": names, "rlnCanonIsJunk": junk.astype(int), "rlnCanonViewId": 0,
                          **{c: true[:, i] for i, c in enumerate(pa.ANGLE_COLUMNS)}})
    return table, truth


def test_priors_at_the_truth_score_zero_and_no_prior_rows_are_not_scored():
    rng = np.random.default_rng(0)
    true = np.stack([rng.uniform(-180, 180, 20), rng.uniform(10, 170, 20), rng.uniform(-180, 180, 20)], axis=1)
    prior = true.copy()
    prior[:4] = pa.NO_PRIOR
    prior[4:6, 2] += 10.0  # 10° off in psi
    junk = np.zeros(20, bool)
    junk[-2:] = True
    scores = pa.score_priors(*_tables(prior, true, junk))
    assert scores["good_with_prior"] == pytest.approx(14 / 18)
    assert scores["error"]["n"] == 14 and scores["error"]["median_deg"] == pytest.approx(0.0, abs=1e-5)
    assert scores["error"]["under_5deg"] == pytest.approx(12 / 14)
    assert scores["error_over_all_good"]["under_5deg"] == pytest.approx(12 / 18)
    assert scores["angles_equal_priors"]
    # An error in psi alone leaves the directions exact, overall and in the class's figures.
    assert scores["direction_error"]["under_5deg"] == 1.0
    assert scores["per_class"]["1"]["direction_error_p90_deg"] == pytest.approx(0.0, abs=1e-5)
    # The convention check: the truth read as the inverse rotation or with psi negated is far off.
    assert scores["convention_check"]["transposed"]["median_deg"] > 20
    assert scores["convention_check"]["psi_negated"]["median_deg"] > 20


def test_the_inverse_convention_is_what_the_transposed_figure_finds():
    """Priors written as the inverse rotation score badly as they are and perfectly once transposed."""
    rng = np.random.default_rng(1)
    true = np.stack([rng.uniform(-180, 180, 10), rng.uniform(10, 170, 10), rng.uniform(-180, 180, 10)], axis=1)
    inverse = -true[:, ::-1]
    scores = pa.score_priors(*_tables(inverse, true, np.zeros(10, bool)))
    assert scores["error"]["median_deg"] > 20
    assert scores["convention_check"]["transposed"]["median_deg"] == pytest.approx(0.0, abs=1e-5)


MODEL_STAR = """
data_model_general

_rlnCurrentResolution                   12.500000

data_model_class_1

loop_
_rlnSpectralIndex #1
_rlnResolution #2
_rlnGoldStandardFsc #3
0 0.000000 1.000000
1 0.020000 0.990000
2 0.040000 0.800000
3 0.060000 0.200000
4 0.080000 0.100000
5 0.100000 0.000000
"""


def test_final_resolution_reads_the_model_and_the_fsc_crossing(tmp_path):
    (tmp_path / "run_model.star").write_text(MODEL_STAR)
    res = refine.final_resolution(tmp_path / "run_model.star")
    assert res["current_resolution_A"] == pytest.approx(12.5)
    assert res["fsc_0143_A"] == pytest.approx(1 / 0.06)  # the last shell at or above 0.143


def test_the_two_refinements_differ_only_in_input_and_first_sampling():
    args = argparse.Namespace(lowpass=30.0, local_healpix=4, relion_threads=1)
    global_cmd = refine.refine_command("global", "Refine3D/global/run", 64, 4.0, args)
    local_cmd = refine.refine_command("local", "Refine3D/local/run", 64, 4.0, args)
    assert global_cmd[:6] == ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi"]
    for cmd in (global_cmd, local_cmd):
        assert {"--auto_refine", "--split_random_halves", "--ctf", "--firstiter_cc"} <= set(cmd)
        assert cmd[cmd.index("--particle_diameter") + 1] == "243"  # 0.95 × 64 × 4 Å: the 288 Å margin does not fit
        assert cmd[cmd.index("--auto_local_healpix_order") + 1] == "4"
    assert global_cmd[global_cmd.index("--healpix_order") + 1] == "2"
    assert local_cmd[local_cmd.index("--healpix_order") + 1] == "4"
    assert global_cmd[global_cmd.index("--i") + 1] == refine.SCRATCH_STAR
    assert local_cmd[local_cmd.index("--i") + 1] == refine.PRIORS_STAR
    differ = {i for i, (a, b) in enumerate(zip(global_cmd, local_cmd)) if a != b}
    assert {global_cmd[i - 1] for i in differ} == {"--i", "--o", "--healpix_order"}


def test_an_unfinished_refinement_reports_its_last_iteration(tmp_path):
    (tmp_path / "Refine3D" / "global").mkdir(parents=True)
    for it in (1, 2, 12):
        (tmp_path / f"Refine3D/global/run_it{it:03d}_half1_model.star").write_text(MODEL_STAR)
    assert refine.progress(tmp_path, "Refine3D/global/run") == {"iterations": 12, "current_resolution_A": 12.5}
    assert refine.progress(tmp_path, "Refine3D/local/run") == {"iterations": 0, "current_resolution_A": None}


def _class3d():
    spec = importlib.util.spec_from_file_location("priors_refine_class3d", REPO / "benchmarks" / "priors_refine" /
                                                  "class3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class3d_scores_classes_by_their_majority_and_counts_particles_left_out_as_set_apart():
    c3 = _class3d()
    molecule_of = {f"{i:06d}@r.mrcs": "ribosome" for i in range(8)} | {f"{i:06d}@o.mrcs": "other" for i in range(5)}
    # Class 2: 5 ribosomes and 1 other; class 1: 2 ribosomes (a second ribosome class); class 3: 1 ribosome and
    # 2 others (the other molecule's); 2 others left out.
    classes = ({f"{i:06d}@r.mrcs": 2 for i in range(5)} | {"000005@r.mrcs": 1, "000006@r.mrcs": 1,
               "000007@r.mrcs": 3} | {"000000@o.mrcs": 2, "000001@o.mrcs": 3, "000002@o.mrcs": 3})
    scores = c3.score_classes(classes, molecule_of)
    assert scores["ribosome_classes"] == [1, 2] and scores["n"] == 13 and scores["n_classified"] == 11
    assert scores["accuracy"] == pytest.approx(11 / 13)  # 7 ribosomes in ribosome classes, 4 others outside
    assert scores["ribosome_recall"] == pytest.approx(7 / 8)
    assert scores["other_in_ribosome_class"] == pytest.approx(1 / 8)


def test_the_two_class3d_runs_differ_only_in_input_and_angular_search():
    c3 = _class3d()
    args = argparse.Namespace(lowpass=30.0, iterations=25, box=64, pixel_size=4.0, threads=2)
    scratch, priors = (c3.class3d_command(m, f"Class3D/{m}/run", args) for m in c3.MODES)
    for cmd in (scratch, priors):
        assert cmd[0] == "relion_refine" and cmd[cmd.index("--K") + 1] == "2" and "--auto_refine" not in cmd
    assert scratch[scratch.index("--healpix_order") + 1] == "2" and "--sigma_ang" not in scratch
    assert priors[priors.index("--healpix_order") + 1] == "3" and priors[priors.index("--sigma_ang") + 1] == "2.5"
    assert scratch[scratch.index("--i") + 1] == c3.SCRATCH_STAR and priors[priors.index("--i") + 1] == c3.PRIORS_STAR


def test_a_stopped_class3d_is_scored_at_its_last_iteration(tmp_path):
    c3 = _class3d()
    (tmp_path / "Class3D" / "scratch").mkdir(parents=True)
    assert c3.last_classes(tmp_path, "Class3D/scratch/run") == (0, {})
    for it, cls in ((1, 1), (3, 2)):
        table = pd.DataFrame({"rlnImageName": ["000001@r.mrcs", "000002@r.mrcs"], "rlnClassNumber": [cls, 1]})
        starfile.write({"particles": table}, tmp_path / f"Class3D/scratch/run_it{it:03d}_data.star")
    assert c3.last_classes(tmp_path, "Class3D/scratch/run") == (3, {"000001@r.mrcs": 2, "000002@r.mrcs": 1})
    row = {"runs": {"scratch": {"timed_out": True, "wall_s": 4000.0, "iterations": 3, "n": 2, "n_classified": 2,
                                "accuracy": 0.5, "ribosome_recall": 0.5, "other_in_ribosome_class": 0.0}}}
    assert "| scratch | 3 | 2 of 2 | 50.0 % | 50.0 % | 0.0 % | > 4000 (stopped) | — |" in c3.table_text(row)
