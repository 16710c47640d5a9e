"""The job's orientation step: the reference map resampled to the working box, each good class matched
(:mod:`.matching`), and every particle's 3-D angles and priors (:mod:`.priors`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.analysis.orientation.matching import ClassMatch, Matcher, MatchConfig
from relion_canon.analysis.orientation.point_group import normalise_symmetry
from relion_canon.analysis.orientation.priors import ParticleOrientations, particle_orientations
from relion_canon.analysis.orientation.reference import load_reference
from relion_canon.context import RunContext

log = logging.getLogger(__name__)


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
                   context: RunContext = RunContext(), config: MatchConfig = MatchConfig()) -> Orientations:
    """Match every class that is not junk (``class_reports[str(n)]["is_junk"]``) against ``reference`` and give
    its particles 3-D orientations; junk and ambiguous classes' particles get none."""
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
    particles = particle_orientations(psi_deg, origin_A, pixel_size_A, classes, trusted, particle_junk)
    report = {
        "reference": ref_report, "symmetry": symmetry, "classes": per_class,
        "coarse_directions": int(len(matcher.coarse)), "coarse_step_deg": config.coarse_step_deg,
        "n_classes_with_prior": len(trusted), "n_particles_with_prior": int(particles.has_prior.sum()),
        "fraction_with_prior": float(particles.has_prior.mean()) if len(psi_deg) else 0.0,
    }
    return Orientations(particles, report, matched)
