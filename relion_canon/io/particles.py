"""One front door for particle files: RELION STAR or cryoSPARC ``.cs``, chosen by the file extension.

Everything downstream works on a :class:`ParticleStar`; a ``.cs`` becomes one in memory (RELION 3.1 form, with
the cryoSPARC ``uid`` in ``rlnCanonUid``), and results go back to cryoSPARC with :func:`write_results_cs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files
from relion_canon.io.imagename import format_image_name, parse_image_name, resolve_path
from relion_canon.io.mrc import open_stack, stack_shape
from relion_canon.io.star import ParticleStar, read_star, write_star

CS_SUFFIX = ".cs"
STAR_SUFFIX = ".star"
RESULT_GROUPS = (  # (file stem, title, description) of the .cs/.csg pairs written back
    ("particles", "All particles (relion_canon)",
     "Every input particle, with alignments2D/pose from relion_canon's in-plane angle and its estimates in "
     "relion_canon/*"),
    ("particles_selected", "Particles kept by relion_canon", "The particles relion_canon did not flag as junk"),
    ("particles_rejected", "Particles rejected by relion_canon", "The particles relion_canon flagged as junk"),
    # Only with a reference map: cryoSPARC selects by subsets, and its jobs read every row's alignments3D.
    ("particles_posed", "Particles with a 3-D pose (relion_canon)",
     "The kept particles whose class was matched to the reference map: alignments3D holds each one's 3-D "
     "orientation, for Local Refinement"),
)


def is_cryosparc(path: str | Path) -> bool:
    return Path(path).suffix.lower() == CS_SUFFIX


def read_particles(path: str | Path | ParticleStar, passthrough: str | Path | None = None,
                   project_dir: str | Path | None = None) -> ParticleStar:
    """Read a particle STAR file or a cryoSPARC particles ``.cs`` (+ its passthrough ``.cs``).

    For a ``.cs``, ``project_dir`` is the cryoSPARC project directory that ``blob/path`` is relative to (image
    names then point into it). A STAR file's names stay as written (RELION resolves them against its project
    directory when the images are opened). An already-read :class:`ParticleStar` is returned as it is.
    """
    if isinstance(path, ParticleStar):
        if passthrough is not None:
            raise ValueError("a passthrough file applies to a .cs file being read, not to a read particle table")
        return path
    if is_cryosparc(path):
        return cryosparc_files.read_cs(path, passthrough, project_dir)
    if passthrough is not None:
        raise InputError("a passthrough file goes with a cryoSPARC particles .cs, not with a STAR file", passthrough)
    return read_star(path)


def _results_star(results: ParticleStar | str | Path) -> ParticleStar:
    return results if isinstance(results, ParticleStar) else read_star(results)


def write_results_cs(input_cs: str | Path | np.ndarray, passthrough: str | Path | None,
                     results: ParticleStar | str | Path, out_dir: str | Path) -> list[Path]:
    """Hand a job's results back to cryoSPARC: ``particles.cs`` and, split by ``rlnCanonIsOutlier``,
    ``particles_selected.cs`` / ``particles_rejected.cs`` (and with a reference map ``particles_posed.cs``, the
    kept ones with a 3-D pose), each with the ``.csg`` "Import Result Group" reads.

    ``input_cs`` (+ ``passthrough``) is what the job read, a path or its records; ``results`` the job's result
    STAR (it carries ``rlnCanonUid``). Each ``.cs`` has the input's ``uid``s and every input field (the
    passthrough's too), ``alignments2D/pose`` from our in-plane angle and our estimates in ``relion_canon/*``.
    Returns the files written: ``.cs`` then ``.csg`` per group.
    """
    if isinstance(input_cs, (str, os.PathLike)):
        records = cryosparc_files.read_cs_records(input_cs, passthrough)
    else:
        records = cryosparc_files.as_records(input_cs)
    star = _results_star(results)
    out = cryosparc_files.results_to_records(records, star)
    groups: list[tuple[str, str, str, np.ndarray]] = [(*RESULT_GROUPS[0], out)]
    if "rlnCanonIsOutlier" in star.particles.columns:
        flag = star.particles["rlnCanonIsOutlier"].to_numpy(np.float64) > 0.5
        groups.append((*RESULT_GROUPS[1], out[~flag]))
        groups.append((*RESULT_GROUPS[2], out[flag]))
        if cryosparc_files.CLASS_PSI_COLUMN in star.particles.columns:
            posed = cryosparc_files.posed_rows(star.particles)
            groups.append((*RESULT_GROUPS[3], out[~flag & posed]))
    out_dir = Path(out_dir)
    written: list[Path] = []
    for stem, title, description, table in groups:
        cs_path = cryosparc_files.save_cs(table, out_dir / f"{stem}{CS_SUFFIX}")
        csg = cryosparc_files.write_csg(out_dir / f"{stem}.csg", cs_path, table, stem, title, description)
        written += [cs_path, csg]
    return written


def convert_particles(src: str | Path, dst: str | Path, passthrough: str | Path | None = None,
                      project_dir: str | Path | None = None, link_stacks: bool = True) -> list[Path]:
    """Convert a cryoSPARC particles ``.cs`` to a RELION STAR file or back; the extensions say which way.

    ``.cs`` -> ``.star``: ``.mrc`` stacks (cryoSPARC's extension, which RELION does not read as a stack) are
    reached through ``.mrcs`` links in ``<dst stem>_stacks/`` beside the STAR file; every stack must be found
    (``project_dir``: the cryoSPARC project) unless ``link_stacks`` is False, which writes the names as they are.

    ``.star`` -> ``.cs``: ``blob/path`` is made relative to ``project_dir`` (the cryoSPARC project) when the stack
    is inside it, else absolute; a ``.csg`` beside the ``.cs`` lets "Import Result Group" take it.
    Returns the files written (links not counted).
    """
    src, dst = Path(src), Path(dst)
    kinds = (src.suffix.lower(), dst.suffix.lower())
    if kinds == (CS_SUFFIX, STAR_SUFFIX):
        star = cryosparc_files.read_cs(src, passthrough, project_dir, require_stacks=link_stacks)
        if link_stacks:
            star = _link_mrc_stacks(star, dst)
        return [write_star(star, dst)]
    if kinds == (STAR_SUFFIX, CS_SUFFIX):
        if passthrough is not None:
            raise InputError("a passthrough file goes with a cryoSPARC .cs input, not with a STAR file", passthrough)
        star = read_star(src)
        blob_paths, box = _blob_paths(star, project_dir, strict=link_stacks)
        records = cryosparc_files.star_to_records(star, blob_paths, box)
        cs_path = cryosparc_files.save_cs(records, dst)
        csg = cryosparc_files.write_csg(dst.with_suffix(".csg"), cs_path, records, RESULT_GROUPS[0][0],
                                        f"Particles from {src.name}", f"Converted from the RELION STAR file {src}")
        return [cs_path, csg]
    raise InputError(f"cannot convert {kinds[0] or 'a file without extension'} to {kinds[1] or 'no extension'}: "
                     "give a .cs and a .star (either way round)", src)


def _link_mrc_stacks(star: ParticleStar, dst: Path) -> ParticleStar:
    """Point ``N@x.mrc`` names at ``x.mrcs`` links in ``<dst stem>_stacks/`` (RELION reads only ``.mrcs`` as
    particle stacks); the links keep the stacks' folder layout below their common folder, so names never clash."""
    refs = [parse_image_name(name, star.path, row + 1) for row, name in enumerate(star.image_names)]
    targets = {r.path: Path(os.path.abspath(r.path)) for r in refs if r.path.lower().endswith(".mrc")}
    if not targets:
        return star
    common = Path(os.path.commonpath([t.parent for t in targets.values()]))
    link_dir = dst.parent / f"{dst.stem}_stacks"
    links: dict[str, str] = {}
    for name, target in targets.items():
        link = link_dir / (target.relative_to(common).as_posix() + "s")
        _symlink(target, link)
        links[name] = str(link)
    return star.with_columns({"rlnImageName": [format_image_name(r.index, links.get(r.path, r.path)) for r in refs]})


def _symlink(target: Path, link: Path) -> None:
    """Create or replace ``link`` -> ``target`` atomically (a symlink made beside it, then renamed)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _blob_paths(star: ParticleStar, project_dir: str | Path | None, strict: bool) -> tuple[dict[str, str], int | None]:
    """Each stack name of a STAR file -> the ``blob/path`` to write, and the box of the first stack found."""
    out: dict[str, str] = {}
    box = None
    project = Path(project_dir).resolve() if project_dir is not None else None
    for row, name in enumerate(star.image_names):
        ref = parse_image_name(name, star.path, row + 1)
        if ref.path in out:
            continue
        found = resolve_path(ref.path, star.path.parent, None)
        if found is None:
            if strict:
                raise InputError(f"image stack {ref.path} not found", star.path, row + 1)
            out[ref.path] = ref.path
            continue
        found = _unlink_ours(found)
        absolute = Path(os.path.abspath(found))
        if project is not None and absolute.is_relative_to(project):
            out[ref.path] = absolute.relative_to(project).as_posix()
        else:
            out[ref.path] = str(absolute)
        if box is None:
            m = open_stack(absolute)
            try:
                box = stack_shape(m)[2]
            finally:
                m.close()
    return out, box


def _unlink_ours(path: Path) -> Path:
    """A ``x.mrcs`` link to ``x.mrc`` (as :func:`convert_particles` makes) -> the ``.mrc`` cryoSPARC wrote."""
    if path.is_symlink() and path.name.lower().endswith(".mrcs"):
        target = Path(os.readlink(path))
        if not target.is_absolute():
            target = path.parent / target
        if target.name == path.name[:-1]:
            return target
    return path
