"""The job's orientation step: the reference map resampled to the working box, each good class matched
(:mod:`.matching`), each particle of a matched class matched on its own about its class's direction
(:mod:`.particle_directions`, when the particles' images are given), and every particle's 3-D angles and priors
(:mod:`.priors`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from relion_canon.analysis.alignment_reference import noise_spectrum
from relion_canon.analysis.orientation.matching import ClassMatch, Matcher, MatchConfig
from relion_canon.analysis.orientation.particle_directions import (
    DirectionSearch,
    ParticleDirections,
    particle_directions,
)
from relion_canon.analysis.orientation.point_group import normalise_symmetry
from relion_canon.analysis.orientation.priors import ParticleOrientations, particle_orientations
from relion_canon.analysis.orientation.reference import load_reference
from relion_canon.analysis.prepared_particles import ImageBatches, Prepared, prepare
from relion_canon.context import RunContext
from relion_canon.ctf import CtfParams

log = logging.getLogger(__name__)


@dataclass
class ParticleImages:
    """The particles as the 2-D alignment read them, for the search of each one's own direction: ``batches``
    over all N rows (at the working box), their CTFs (None: none) and (N,) pixel sizes at that box."""

    batches: ImageBatches
    ctf: CtfParams | None
    pixel_size_A: np.ndarray


@dataclass
class Orientations:
    """What the orientation step found: the particles' columns, the per-class report, and for the figure each
    matched class's average beside its projection."""

    particles: ParticleOrientations
    report: dict[str, Any]
    matched: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class → (average, projection)


def orient_classes(reference: str | Path, reference_pixel_size_A: float | None, symmetry: str,
                   class_averages: dict[int, np.ndarray], class_reports: dict[str, dict[str, Any]],
                   classes: dict[int, np.ndarray], psi_deg: np.ndarray, origin_A: np.ndarray | None,
                   box: int, pixel_size_A: float, particle_junk: np.ndarray | None = None,
                   context: RunContext = RunContext(), config: MatchConfig = MatchConfig(),
                   images: ParticleImages | None = None, search: DirectionSearch = DirectionSearch()) -> Orientations:
    """Match every class that is not junk (``class_reports[str(n)]["is_junk"]``) against ``reference`` and give
    its particles 3-D orientations; junk and ambiguous classes' particles get none. With ``images``, each
    particle's own direction is searched about its class's."""
    volume, ref_report = load_reference(reference, reference_pixel_size_A, box, pixel_size_A)
    symmetry = normalise_symmetry(symmetry)
    matcher = Matcher(volume, pixel_size_A, symmetry, config)
    per_class: dict[str, dict[str, Any]] = {}
    trusted: dict[int, ClassMatch] = {}
    matched: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for number, average in sorted(class_averages.items()):
        info = class_reports.get(str(number), {})
        if info.get("is_junk"):
            per_class[str(number)] = {"junk": True}
            continue
        context.check_stop("orientation")
        match = matcher.match(average, info.get("resolution_A"))
        per_class[str(number)] = match.report()
        matched[number] = (np.asarray(average), matcher.projection(match))
        if match.ambiguous:
            log.warning(f"Class {number}: no 3-D prior, its match is ambiguous ({match.reason})")
        else:
            trusted[number] = match
            log.info(f"Class {number}: rot {match.rot_deg:.1f}°, tilt {match.tilt_deg:.1f}°, in-plane offset "
                     f"{match.psi_deg:.1f}° (correlation {match.peak:.3f}, {match.margin:.3f} above the next "
                     f"direction)")
    directions = None
    if images is not None and trusted:
        directions = own_directions(images, classes, trusted, psi_deg, origin_A, particle_junk, matcher, search,
                                    context)
        for number in trusted:
            per_class[str(number)].update(directions.spread(number, classes[number], search))
    particles = particle_orientations(psi_deg, origin_A, pixel_size_A, classes, trusted, particle_junk, directions)
    report = {
        "reference": ref_report, "symmetry": symmetry, "classes": per_class,
        "coarse_directions": int(len(matcher.coarse)), "coarse_step_deg": config.coarse_step_deg,
        "n_classes_with_prior": len(trusted), "n_particles_with_prior": int(particles.has_prior.sum()),
        "fraction_with_prior": float(particles.has_prior.mean()) if len(psi_deg) else 0.0,
    }
    if directions is not None:
        report["particle_directions"] = {"radius_deg": search.radius_deg, "step_deg": search.step_deg,
                                         "inplane_step_deg": search.inplane_step_deg,
                                         "inplane_steps": search.inplane_steps,
                                         "n_particles": int(directions.searched.sum())}
    return Orientations(particles, report, matched)


def own_directions(images: ParticleImages, classes: dict[int, np.ndarray], trusted: dict[int, ClassMatch],
                   psi_deg: np.ndarray, origin_A: np.ndarray | None, particle_junk: np.ndarray | None,
                   matcher: Matcher, search: DirectionSearch, context: RunContext) -> ParticleDirections:
    """Each particle of a ``trusted`` class (not flagged as junk) matched on its own (:mod:`.particle_directions`):
    the particles read twice, once for their noise spectrum and once to be scored."""
    n = len(psi_deg)
    class_of = np.zeros(n, dtype=np.int64)
    for number, rows in classes.items():
        class_of[rows] = number
    wanted = np.isin(class_of, list(trusted))
    if particle_junk is not None:
        wanted &= ~particle_junk
    rows = np.flatnonzero(wanted)
    grid = matcher.grid
    log.info(f"Searching each particle's own direction within {search.radius_deg:g}° of its class's "
             f"({len(rows)} particles of {len(trusted)} classes)")
    context.check_stop("orientation")
    # Only this process reads them here (the job's other processes are done): no sum over processes.
    noise = noise_spectrum((batch for _, batch in images.batches(rows)), len(rows), grid.rings, grid.n_rings,
                           over_processes=False)
    shift_px = (np.zeros((n, 2)) if origin_A is None
                else -np.asarray(origin_A, dtype=np.float64) / np.asarray(images.pixel_size_A)[:, None])
    with tqdm(total=len(rows), desc="particle directions", unit="particle", leave=False,
              disable=not context.progress or None) as bar:

        def prepared() -> Iterator[Prepared]:
            for idx, batch in images.batches(rows):
                context.check_stop("orientation")
                yield prepare(idx, batch, images.ctf, images.pixel_size_A, grid, noise)
                bar.update(len(idx))

        found = particle_directions(prepared(), class_of, trusted, psi_deg, shift_px, matcher, noise, search)
    moved = found.moved_deg[found.searched]
    if len(moved):
        spreads = list(found.sigma_deg.values())
        log.info(f"Each particle's own direction: moved from its class's by {np.median(moved):.1f}° (median), "
                 f"{np.percentile(moved, 90):.1f}° (90th percentile); the classes' fitted spread "
                 f"{min(spreads):.1f}-{max(spreads):.1f}°")
    return found
