"""`relion-canon convert --i IN --o OUT`: cryoSPARC particles .cs <-> RELION particle STAR (by the extensions)."""

from __future__ import annotations

from pathlib import Path

import click

from relion_canon.io.particles import convert_particles


@click.command("convert")
@click.option("--i", "src", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A cryoSPARC particles .cs or a RELION particle STAR file.")
@click.option("--o", "dst", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The other kind: .star for a .cs input, .cs (+ .csg beside it) for a STAR input.")
@click.option("--passthrough", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The passthrough .cs of a particles .cs (its other fields, joined on uid).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The cryoSPARC project folder blob/path is relative to (.cs -> STAR), or to make blob/path "
                   "relative to (STAR -> .cs).")
@click.option("--keep-names", is_flag=True,
              help="Write stack names as they are, without looking for the stacks (and, for .cs -> STAR, without "
                   "the .mrcs links RELION needs to read cryoSPARC's .mrc stacks).")
def convert(src: Path, dst: Path, passthrough: Path | None, project_dir: Path | None, keep_names: bool) -> None:
    """Convert particles between cryoSPARC (.cs) and RELION (.star).

    .cs -> STAR: CTF, pixel size, optics groups (one per exposure group), poses as Euler angles and origins
    in Å, and the cryoSPARC uid in rlnCanonUid. cryoSPARC's .mrc stacks are linked as .mrcs in
    OUT_stacks/ beside the STAR file, since RELION reads only .mrcs as particle stacks.

    STAR -> .cs: the same fields back, plus a .csg so that cryoSPARC's "Import Result Group" job takes it.
    """
    written = convert_particles(src, dst, passthrough, project_dir, link_stacks=not keep_names)
    click.echo("Wrote " + ", ".join(str(p) for p in written))
