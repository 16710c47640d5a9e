"""The files of RELION's External job protocol: exit files, job.star, RELION_OUTPUT_NODES.star, templates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relion_canon.errors import InputError
from relion_canon.relion import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    ExitStatus,
    NodeKind,
    abort_requested,
    clear_stale_files,
    detect_relion_version,
    node_type_label,
    read_job_star,
    write_exit_file,
    write_output_nodes,
)
from relion_canon.relion.job_star import normalise_version, parse_star_text, version_from_pipeline
from tests.relion.helpers import write_job_star

REPO = Path(__file__).resolve().parents[2]


# --- exit files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(ExitStatus))
def test_write_exit_file_leaves_exactly_one(tmp_path, status):
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        (tmp_path / name).touch()
    write_exit_file(tmp_path, status)
    present = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("RELION_JOB_EXIT"))
    assert present == [status.value]


def test_aborted_exit_removes_the_abort_request(tmp_path):
    (tmp_path / ABORT_NOW).touch()
    assert abort_requested(tmp_path)
    write_exit_file(tmp_path, ExitStatus.ABORTED)
    assert not abort_requested(tmp_path)
    assert (tmp_path / EXIT_ABORTED).exists()


def test_failure_exit_keeps_a_pending_abort_request(tmp_path):
    # Only the job that honours an abort removes the request.
    (tmp_path / ABORT_NOW).touch()
    write_exit_file(tmp_path, ExitStatus.FAILURE)
    assert abort_requested(tmp_path)


def test_clear_stale_files(tmp_path):
    for name in (EXIT_SUCCESS, EXIT_FAILURE, "RELION_OUTPUT_NODES.star", ABORT_NOW, "particles.star"):
        (tmp_path / name).touch()
    removed = clear_stale_files(tmp_path)
    assert sorted(removed) == sorted([EXIT_SUCCESS, EXIT_FAILURE, "RELION_OUTPUT_NODES.star"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ABORT_NOW, "particles.star"])


def test_return_codes_differ():
    assert [s.return_code for s in ExitStatus] == [0, 1, 2]


# --- job.star ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
@pytest.mark.parametrize("is_continue", [False, True])
def test_read_job_star_version_and_continue(tmp_path, version, is_continue):
    write_job_star(tmp_path, version, is_continue)
    job = read_job_star(tmp_path)
    assert job.version == version
    assert job.is_continue is is_continue
    assert job.job_type == ("99" if version == "3.1" else "relion.external")
    # Quoted values keep their spaces; "" is an empty value.
    assert job.options["other_args"] == "--gpu 0 --seed 2"
    assert job.options["param2_label"] == ""
    assert job.options["in_part"] == "Input/particles.star"


def test_read_job_star_written_by_relion_31(tmp_path):
    """The exact text relion_pipeliner 3.1.3 writes (captured from --addJob External)."""
    text = """
# version 30001

data_job

_rlnJobType                            99
_rlnJobIsContinue                       0
 

# version 30001

data_joboptions_values

loop_ 
_rlnJobOptionVariable #1 
_rlnJobOptionValue #2 
  do_queue         No 
    fn_exe relion_canon_external 
  in_3dref         "" 
   in_part Input/particles.star 
min_dedicated          1 
nr_threads          2 
other_args  "--gpu 0" 
param1_label       mode 
param1_value      train 
param2_label     labels 
param2_value         "" 
qsubscript /public/EM/RELION/relion/bin/relion_qsub.csh 
 queuename    openmpi 
 
"""
    (tmp_path / "job.star").write_text(text)
    job = read_job_star(tmp_path / "job.star")
    assert (job.version, job.is_continue) == ("3.1", False)
    assert job.options["nr_threads"] == "2"
    assert job.options["other_args"] == "--gpu 0"
    assert job.options["in_3dref"] == ""
    assert job.options["queuename"] == "openmpi"


def test_read_job_star_rejects_other_files(tmp_path):
    (tmp_path / "job.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    with pytest.raises(InputError, match="job.star"):
        read_job_star(tmp_path)
    with pytest.raises(InputError, match="cannot read"):
        read_job_star(tmp_path / "missing")


def test_unbalanced_quote_does_not_break_parsing():
    _, pairs, loops = parse_star_text('data_x\nloop_\n_a #1\n_b #2\nother_args "--x \\"\nfoo bar\n')
    assert loops["x"][-1] == ["foo", "bar"]


def test_version_from_default_pipeline(tmp_path):
    p = tmp_path / "default_pipeline.star"
    p.write_text("# version 30001\ndata_pipeline_processes\nloop_\n_rlnPipeLineProcessName #1\n"
                 "_rlnPipeLineProcessType #3\nImport/job001/ 0\n")
    assert version_from_pipeline(p) == "3.1"
    p.write_text("# version 30001\ndata_pipeline_processes\nloop_\n_rlnPipeLineProcessTypeLabel #3\nrelion.import\n")
    assert version_from_pipeline(p) == "4.0"
    p.write_text("# version 50001\ndata_pipeline_general\n_rlnPipeLineJobCounter 2\n")
    assert version_from_pipeline(p) == "5.0"
    p.write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n")
    assert version_from_pipeline(p) is None


def test_detect_relion_version_order(tmp_path):
    out = tmp_path / "External" / "job001"
    out.mkdir(parents=True)
    (tmp_path / "default_pipeline.star").write_text("# version 50001\ndata_pipeline_general\n")
    assert detect_relion_version(out, tmp_path)[0] == "5.0"  # from the pipeline
    write_job_star(out, "3.1")
    assert detect_relion_version(out, tmp_path)[0] == "3.1"  # the job's own job.star wins
    assert detect_relion_version(out, tmp_path, "4.0.1")[0] == "4.0"  # an explicit choice wins over both
    assert detect_relion_version(tmp_path / "nowhere", tmp_path / "nowhere")[0] == "4.0"
    with pytest.raises(InputError, match="3.1, 4.0 or 5.0"):
        normalise_version("2.1")


# --- RELION_OUTPUT_NODES.star -----------------------------------------------------------------------------


@pytest.mark.parametrize("version, particles_label", [
    ("4.0", "ParticlesData.star.relion"),
    ("5.0", "ParticleGroupMetadata.star.relion"),
])
def test_output_nodes_both_columns(tmp_path, version, particles_label):
    path = write_output_nodes(tmp_path, [("External/job001/particles.star", NodeKind.PARTICLES),
                                         ("External/job001/logfile.pdf", NodeKind.LOGFILE)], version)
    text = path.read_text()
    _, _, loops = parse_star_text(text)
    assert loops["output_nodes"] == [
        ["External/job001/particles.star", "3", particles_label],
        ["External/job001/logfile.pdf", "13", "LogFile.pdf.relion"],
    ]
    assert "_rlnPipeLineNodeType #2" in text and "_rlnPipeLineNodeTypeLabel #3" in text
    assert text.startswith("# version 50001" if version == "5.0" else "# version 30001")
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, nothing left over


def test_output_nodes_31_without_the_label_column(tmp_path, require_relion):
    """RELION 3.1 reads the integer alone and warns about a label column it does not know; the file it gets
    has none, and relion_star_handler 3.1 reads it without a warning."""
    path = write_output_nodes(tmp_path, [("External/job001/particles.star", NodeKind.PARTICLES),
                                         ("External/job001/run_it000_model.star", NodeKind.CLASS_MODEL)], "3.1")
    text = path.read_text()
    _, _, loops = parse_star_text(text)
    assert loops["output_nodes"] == [["External/job001/particles.star", "3"],
                                     ["External/job001/run_it000_model.star", "8"]]
    assert "TypeLabel" not in text and text.startswith("# version 30001")
    res = subprocess.run(["relion_star_handler", "--i", str(path), "--o", str(tmp_path / "copy.star")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "unknown label" not in res.stdout + res.stderr


def test_output_nodes_refuse_bad_names(tmp_path):
    with pytest.raises(ValueError, match="white space"):
        write_output_nodes(tmp_path, [("External/job 1/particles.star", NodeKind.PARTICLES)], "3.1")
    with pytest.raises(ValueError):
        node_type_label(NodeKind.PARTICLES, "6.0")
    assert not (tmp_path / "RELION_OUTPUT_NODES.star").exists()


# --- the job.star templates users load ----------------------------------------------------------------------


@pytest.mark.parametrize("folder, version", [("relion3.1", "3.1"), ("relion4.0", "4.0"), ("relion5.0", "5.0")])
def test_templates(folder, version):
    from relion_canon.relion.params import build_parser

    job = read_job_star(REPO / "external_job" / folder / "job.star")
    assert job.version == version and not job.is_continue
    assert job.options["fn_exe"] == "relion_canon_external"
    labels = [job.options[f"param{i}_label"] for i in range(1, 11)]
    assert labels == ["mode", "model", "model_path", "epochs", "box", "outliers", "outlier_z", "df_range", "labels",
                      "gpu"]
    # Every pre-labelled param is one the executable knows, with a value it accepts.
    known = {a.dest for a in build_parser()._actions}
    assert set(labels) <= known
    argv = ["--o", "External/job001/", "--in_parts", "x.star"]
    for i in range(1, 11):
        argv += [f"--{job.options[f'param{i}_label']}"] + ([job.options[f"param{i}_value"]]
                                                          if job.options[f"param{i}_value"] else [])
    args = build_parser().parse_args(argv + ["--j", "2"])  # an unknown label would raise UsageError
    assert (args.mode, args.outliers, args.labels, args.epochs, args.outlier_z) == \
        ("train", "ensemble", "no", None, None)
