"""The job's one option table (JobConfig's field metadata) and the three front doors built from it:
`relion-canon run`, `relion-canon cryosparc-job` and the RELION External job offer every field (or say why not),
with the same help text and default, and a value given on any of them reaches the JobConfig."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from relion_canon.options import (
    BOOL,
    CRYOSPARC,
    EXTERNAL,
    FLOAT,
    FRONT_DOORS,
    INT,
    PAIRS,
    PATH,
    RANGE,
    RUN,
    TEXT,
    build_config,
    job_options,
    option,
    parse_model_options,
)
from relion_canon.job import JobConfig

REPO = Path(__file__).resolve().parents[1]
TABLE = list(job_options(JobConfig))


# --- the table ----------------------------------------------------------------------------------------------


def test_every_jobconfig_field_is_in_the_table():
    assert [e.name for e in TABLE] == [f.name for f in dataclasses.fields(JobConfig)]
    for entry in TABLE:
        assert entry.option.help.strip(), entry.name


def test_names_flags_and_params_are_unique():
    for key in ("name", "cli_flag", "external_param"):
        values = [getattr(e, key) for e in TABLE]
        assert len(values) == len(set(values)), key
    # An old External label names one param, and none that another param is called now.
    labels = [label for e in TABLE for label in e.external_labels]
    assert len(labels) == len(set(labels))


def test_fields_a_front_door_leaves_out_say_why():
    for entry in TABLE:
        assert set(entry.option.not_in) <= set(FRONT_DOORS), entry.name
        for door, reason in entry.option.not_in.items():
            assert reason.strip(), (entry.name, door)
    left_out = {(e.name, door) for e in TABLE for door in e.option.not_in}
    # The External job takes the device from its gpu param and the threads from RELION's own --j.
    assert left_out == {("device", EXTERNAL), ("threads", EXTERNAL)}


def test_defaults_are_jobconfig_defaults():
    defaults = JobConfig()
    for entry in TABLE:
        assert entry.default == getattr(defaults, entry.name), entry.name
    assert build_config(JobConfig, {}) == defaults
    with pytest.raises(TypeError, match="no option"):
        build_config(JobConfig, {"nonsense": 1})


def test_choices_are_checked_case_insensitively():
    entry = next(e for e in TABLE if e.name == "outlier_method")
    assert entry.option.choose("LOF") == "lof"
    with pytest.raises(ValueError, match="'dbscan' is not one of ensemble, iforest, lof, covariance"):
        entry.option.choose("dbscan")
    model = next(e for e in TABLE if e.name == "model")
    assert model.default in model.option.choice_names()


def test_nested_config_dataclasses_contribute_their_options():
    @dataclasses.dataclass
    class Inner:
        depth: int = option(3, kind=INT, help="How deep.")

    @dataclasses.dataclass
    class Outer:
        name: str = option("a", kind=TEXT, help="A name.", not_in={EXTERNAL: "not for RELION"})
        inner: Inner = dataclasses.field(default_factory=Inner)
        internal: int = 0  # no option: not offered anywhere

    entries = list(job_options(Outer))
    assert [(e.name, e.path, e.default) for e in entries] == [("name", ("name",), "a"),
                                                               ("depth", ("inner", "depth"), 3)]
    assert [e.name for e in job_options(Outer, EXTERNAL)] == ["depth"]
    assert build_config(Outer, {"depth": 5, "name": "b"}) == Outer(name="b", inner=Inner(depth=5))


def test_model_options_pairs():
    assert parse_model_options(["lr=0.001", "latent-dim=4", "act= relu ", None, ""]) == \
        {"lr": 0.001, "latent_dim": 4, "act": "relu"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["lr"])


# --- the front doors ----------------------------------------------------------------------------------------


def _sample(entry):
    """A value for each option that differs from its default, as the JobConfig holds it."""
    opt = entry.option
    if opt.choices is not None:
        return next(c for c in opt.choice_names() if c != entry.default)
    if entry.name == "sym":  # a point group (its own check refuses other text)
        return "D2"
    return {
        TEXT: "cpu", PATH: "Some/job/model.pt", INT: int(opt.minimum or 0) + 17, FLOAT: (opt.minimum or 0) + 1.5,
        BOOL: not entry.default, RANGE: (5000.0, 25000.0), PAIRS: {"latent_dim": 8},
    }[opt.kind]


def _click_args(entries):
    args = []
    for entry in entries:
        value = _sample(entry)
        flag = entry.cli_flag
        if entry.option.kind == BOOL:
            on, _, off = flag.partition("/")
            args.append(on if value else off)
        elif entry.option.kind == RANGE:
            args += [flag, *(str(v) for v in value)]
        elif entry.option.kind == PAIRS:
            args += [flag, *(f"{k}={v}" for k, v in value.items())]
        else:
            args += [flag, str(value)]
    return args


def _external_args(entries):
    args = []
    for entry in entries:
        value = _sample(entry)
        kind = entry.option.kind
        if kind == PAIRS:
            for key, item in value.items():
                args += [f"--{entry.external_param}", f"{key}={item}"]
            continue
        if kind == BOOL:
            text = "yes" if value else "no"
        elif kind == RANGE:
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        args += [f"--{entry.external_param}", text]
    return args


def _click_command(door):
    if door == RUN:
        from relion_canon.cli.run_cmd import run_command

        return run_command
    from relion_canon.cli.cryosparc_cmd import cryosparc_job

    return cryosparc_job


@pytest.mark.parametrize("door", [RUN, CRYOSPARC])
def test_click_front_door_declares_the_table(door):
    params = {p.name: p for p in _click_command(door).params}
    for entry in TABLE:
        if not entry.offered_by(door):
            assert entry.name not in params
            continue
        param = params[entry.name]
        assert param.help == entry.option.help, entry.name
        assert entry.cli_flag.split("/")[0] in param.opts, entry.name
        if entry.option.kind not in (PAIRS, RANGE):
            assert param.default == entry.default, entry.name


@pytest.fixture
def captured(monkeypatch):
    """The JobConfig each front door hands to the job (the job itself replaced)."""
    import relion_canon.cryosparc.job as cryosparc_job
    import relion_canon.job as pipeline

    configs = []

    def fake_run_job(particles, out_dir, config, **kwargs):
        configs.append(config)

    def fake_external_job(url, project_uid, workspace_uid, input_ref, out_dir, config, **kwargs):
        configs.append(config)
        return cryosparc_job.CryosparcJobResult(project_uid, "J2", {}, None)

    monkeypatch.setattr(pipeline, "run_job", fake_run_job)
    monkeypatch.setattr(cryosparc_job, "run_external_job", fake_external_job)
    return configs


def _invoke(door, extra, tmp_path):
    base = {RUN: ["--i", str(tmp_path / "p.star"), "--o", str(tmp_path / "out")],
            CRYOSPARC: ["--url", "http://cs:39000", "--project", "P1", "--workspace", "W1", "--input",
                        "J1.particles", "--o", str(tmp_path / "out")]}[door]
    res = CliRunner().invoke(_click_command(door), base + extra)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("door", [RUN, CRYOSPARC])
def test_click_front_door_defaults_and_values_reach_the_job(door, captured, tmp_path):
    _invoke(door, [], tmp_path)
    assert captured[-1] == JobConfig()
    offered = [e for e in TABLE if e.offered_by(door)]
    _invoke(door, _click_args(offered), tmp_path)
    assert captured[-1] == JobConfig(**{e.name: _sample(e) for e in offered})


def _external_config(argv):
    from relion_canon.relion.params import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["--o", "x/", "--in_parts", "p.star", *argv]))[0]


def test_external_front_door_declares_the_table():
    from relion_canon.relion.params import build_parser

    actions = {a.dest: a for a in build_parser()._actions}
    for entry in TABLE:
        if not entry.offered_by(EXTERNAL):
            assert not set(entry.external_labels) & set(actions), entry.name
            continue
        assert actions[entry.external_param].help == entry.option.help, entry.name
        for alias in entry.option.external_aliases:  # accepted, but --help lists only the current label
            assert actions[alias].help == argparse.SUPPRESS, alias


def test_external_front_door_defaults_and_values_reach_the_job():
    assert _external_config([]) == JobConfig()
    offered = [e for e in TABLE if e.offered_by(EXTERNAL)]
    # An empty value (RELION passes a labelled param with an empty value as a bare flag) is the default.
    assert _external_config([f"--{e.external_param}" for e in offered if e.option.kind != BOOL]) == JobConfig()
    config = _external_config(["--mode", "apply", *_external_args(offered)])
    assert config == JobConfig(**{e.name: _sample(e) for e in offered})


def test_external_old_labels_reach_the_same_config():
    """Jobs saved before the labels were shortened (outlier_method, defocus_range, ...) still run as they did."""
    renamed = [e for e in TABLE if e.offered_by(EXTERNAL) and e.option.external_aliases]
    assert {e.name for e in renamed} >= {"outlier_method", "outlier_threshold", "defocus_range"}
    current = _external_args(renamed)
    old = [f"--{e.option.external_aliases[0]}" if arg == f"--{e.external_param}" else arg
           for e in renamed for arg in _external_args([e])]
    assert old != current
    assert _external_config(old) == _external_config(current) == JobConfig(**{e.name: _sample(e) for e in renamed})


def test_external_help_lists_every_param():
    from relion_canon.relion.params import external_params, params_help

    text = params_help()
    for entry in external_params():
        assert f"--{entry.external_param}" in text
        for alias in entry.option.external_aliases:
            assert f"--{alias}" not in text


def test_help_texts_leave_the_default_to_the_table():
    """Each front door shows the table's default beside the help; a help text naming its own number drifts."""
    for entry in TABLE:
        assert not re.search(r"default:?\s*[0-9]", entry.option.help), entry.name


def test_epochs_default_is_described_as_the_job_trains():
    from relion_canon.cli.run_cmd import run_command
    from relion_canon.job import DEFAULT_EPOCHS
    from relion_canon.relion.params import params_help

    assert JobConfig().epochs == DEFAULT_EPOCHS
    run_help = " ".join(CliRunner().invoke(run_command, ["--help"], terminal_width=200).output.split())
    assert re.search(rf"--epochs INTEGER Training epochs [^[]*\[default: {DEFAULT_EPOCHS}\]", run_help), run_help
    external = " ".join(params_help().split("--epochs", 1)[1].split("--", 1)[0].split())
    assert external.endswith(f"[default: {DEFAULT_EPOCHS}]"), external


# --- RELION's job.star templates and the External job's README -----------------------------------------------


def _external_param_names():
    from relion_canon.relion.params import external_params

    return {e.external_param for e in external_params()}


@pytest.mark.parametrize("folder", ["relion3.1", "relion4.0", "relion5.0"])
def test_templates_use_only_params_the_table_knows(folder):
    from relion_canon.relion.job_star import read_job_star

    job = read_job_star(REPO / "external_job" / folder / "job.star")
    labels = {v for k, v in job.options.items() if re.fullmatch(r"param\d+_label", k) and v}
    assert labels and labels <= _external_param_names()
    argv = []
    for key, label in job.options.items():
        if re.fullmatch(r"param\d+_label", key) and label:
            value = job.options[key.replace("_label", "_value")]
            argv += [f"--{label}"] + ([value] if value else [])
    assert _external_config(argv) == JobConfig()  # the templates' values are the defaults


def test_readme_names_only_params_the_table_knows():
    text = (REPO / "external_job" / "README.md").read_text()
    rows = re.findall(r"^\| \d+ \| `(\w+)` \|", text, flags=re.M)
    assert rows and set(rows) <= _external_param_names()
    additional = next(line for line in text.splitlines() if line.startswith("| Additional arguments:"))
    flags = set(re.findall(r"`--(\w+)", additional))
    assert flags and flags <= _external_param_names()


# --- the table's rules, one implementation for every front door ------------------------------------------------


def test_every_number_option_has_a_rule_and_the_rules_refuse():
    from relion_canon.options import OptionError, check_config

    entries = {e.name: e for e in TABLE}
    assert (entries["box"].option.minimum, entries["box"].option.maximum) == (24, 256)
    for entry in TABLE:
        if entry.option.kind in (INT, FLOAT):
            assert entry.option.minimum is not None or entry.name == "outlier_threshold", entry.name
            assert entry.option.problem(float("nan")) is not None, entry.name  # never nan, never inf
            assert entry.option.problem(entry.default) is None, entry.name
    assert entries["outlier_threshold"].option.problem(float("inf")) == "must be a finite number, got inf"
    assert entries["defocus_range"].option.problem((25000.0, 5000.0)) == "expected 0 < min < max, got 25000 5000"
    assert entries["device"].option.problem("cuda:1") is None
    assert "did you mean cuda?" in entries["device"].option.problem("GPU")
    # Each front door names the option as its users type it.
    config = JobConfig(max_shift_px=-1.0)
    for door, name in ((RUN, "--max-shift"), (CRYOSPARC, "--max-shift"), (EXTERNAL, "--max_shift"),
                       (None, "max_shift_px")):
        with pytest.raises(OptionError, match=rf"^{name}: must be at least 0, got -1$"):
            check_config(config, door)
    check_config(JobConfig())  # the defaults pass
