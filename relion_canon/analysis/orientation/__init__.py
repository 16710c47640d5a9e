"""Full 3-D orientations from 2-D classes and a reference map (``--ref``): each good class average is matched
against projections of the map over the point group's asymmetric unit (:mod:`.matching`); every particle of a
confidently matched class is matched on its own about its class's direction (:mod:`.particle_directions`), and
gets the orientation found, as angles and priors for RELION's local searches (:mod:`.priors`).

Modules: :mod:`.reference` (the map, checked and resampled), :mod:`.point_group` (C1, Cn, Dn, T, O, I in RELION's
axes), :mod:`.directions` (grids), :mod:`.matching`, :mod:`.particle_directions` (each particle's own direction
about its class's), :mod:`.priors`, :mod:`.orient` (the job's step).
"""

from relion_canon.analysis.orientation.matching import ClassMatch, Matcher, MatchConfig
from relion_canon.analysis.orientation.orient import Orientations, ParticleImages, orient_classes
from relion_canon.analysis.orientation.priors import NO_PRIOR, ORIENTATION_COLUMNS, particle_orientations
from relion_canon.analysis.orientation.reference import check_reference, load_reference

__all__ = ["NO_PRIOR", "ORIENTATION_COLUMNS", "ClassMatch", "MatchConfig", "Matcher", "Orientations", "ParticleImages",
           "check_reference", "load_reference", "orient_classes", "particle_orientations"]
