"""relion_canon.logs and relion_canon.context: where messages go, and how a run is asked to stop."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from relion_canon.context import QUIET, RunContext
from relion_canon.logs import log_to

log = logging.getLogger("relion_canon.tests_probe")


def test_lines_reach_every_destination_only_inside_the_block():
    stream, lines = io.StringIO(), []
    with log_to(stream, lines.append):
        log.info("round 1/10: psi changed by 3.00° rms")
        log.debug("not shown at INFO")
    log.info("after the block")
    assert stream.getvalue() == "round 1/10: psi changed by 3.00° rms\n"
    assert lines == ["round 1/10: psi changed by 3.00° rms"]


def test_nested_destinations_do_not_print_twice():
    outer, inner = io.StringIO(), io.StringIO()
    with log_to(outer):
        with log_to(inner):
            log.info("x")
        log.info("y")
    assert outer.getvalue() == "x\ny\n" and inner.getvalue() == "x\n"


def test_a_failing_destination_does_not_stop_the_work(capsys):
    def broken(line: str) -> None:
        raise OSError("event log unreachable")

    stream = io.StringIO()
    with log_to(broken, stream):
        log.info("still runs")
    assert stream.getvalue() == "still runs\n"
    assert "event log unreachable" in capsys.readouterr().err


def test_context_stops_on_request_and_normalises_the_project_dir():
    asked = [False]
    ctx = RunContext(project_dir="proj", should_stop=lambda: asked[0])
    assert ctx.project_dir == Path("proj")
    ctx.check_stop("alignment")
    asked[0] = True
    with pytest.raises(InterruptedError, match="alignment stopped on request"):
        ctx.check_stop("alignment")
    QUIET.check_stop("anything")
    assert QUIET.progress is False and QUIET.project_dir is None
