"""`relion-canon info FILE`: summarise a particle file and list every problem in it (the validator to run first)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from relion_canon.io.validate import inspect_file


@click.command("info")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="RELION project directory that image names are relative to (default: the current directory).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Extra folder to look for stacks in, by file name (for STAR files moved away from their project).")
@click.option("--no-scan", is_flag=True, help="Skip reading every image to look for NaN/inf and constant images.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(file: Path, project_dir: Path | None, data_dir: Path | None, no_scan: bool, as_json: bool) -> None:
    """Summarise FILE (a particle STAR file or an MRC stack) and check it.

    Checks that every referenced stack exists and is long enough, that box sizes agree with each other
    and with the optics table, that voltage, Cs and pixel size are given, and (unless --no-scan) that no
    image has NaN/inf pixels or is constant. Exits with status 1 and names each problem if any is found.
    """
    bar = tqdm(desc="scanning images", unit="img", disable=no_scan or as_json or None, leave=False, file=sys.stderr)
    report = inspect_file(file, project_dir, data_dir, scan_pixels=not no_scan, progress=bar.update)
    bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format())
    if not report.ok:
        n_more = len(report.problems) - 1
        more = f" (and {n_more} more problem{'s' if n_more > 1 else ''})" if n_more else ""
        click.echo(f"relion-canon info: error: {report.problems[0]}{more}", err=True)
        sys.exit(1)
