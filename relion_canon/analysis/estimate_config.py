"""The options the analysis stage (:func:`relion_canon.analysis.estimate.estimate`) reads.

:class:`~relion_canon.job.JobConfig` inherits them, so a job's config is an ``EstimateConfig`` and the
option table (:mod:`relion_canon.options`) sees these fields with the rest; ``analysis`` never imports the
whole job (:mod:`relion_canon.job`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from relion_canon.options import BOOL, EXTERNAL, FLOAT, INT, PATH, RANGE, TEXT, option

MIN_BOX, MAX_BOX = 24, 256
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_problem(value: str) -> str | None:
    """Why a device name is refused (torch would fail on it only once training starts), or None."""
    if _DEVICE.fullmatch(str(value)):
        return None
    m = re.fullmatch(r"(?:gpu|nvidia|cuda)\s*:?\s*(\d*)", str(value).strip().lower())
    hint = f"; did you mean cuda{':' + m.group(1) if m.group(1) else ''}?" if m else ""
    return f"{value!r} is not a device: use auto, cpu, cuda or cuda:N{hint}"


def symmetry_problem(value: str) -> str | None:
    """Why ``value`` is not a point group the orientation step handles, or None (imported on use: the option
    table is read by front doors that never match a class)."""
    from relion_canon.analysis.orientation.point_group import symmetry_problem as problem

    return problem(value)


_NO_DEVICE_PARAM = "the gpu param chooses the device (and trains on several GPUs, one process each)"


@dataclass
class EstimateConfig:
    """How the trained model's outputs become the job's estimates; the defaults are what pressing Run gives."""

    # None: refinement works on the particles as they are
    # 24-256: the boxes the networks are built for (the job also refuses a box larger than the particles').
    box: int | None = option(None, kind=INT, minimum=MIN_BOX, maximum=MAX_BOX,
                             help="Fourier-crop the particles to this box (px, 24-256) first.")
    refine: bool = option(True, kind=BOOL, cli_flag="--refine/--no-refine",
                          help="Refine every angle against the learnt canonical image (and fit defocus to it).")
    # px at the working box. 5 is RELION Class2D's default offset range: picked particles sit a few px off.
    max_shift_px: float = option(5.0, kind=FLOAT, minimum=0.0, cli_flag="--max-shift", external_param="max_shift",
                                 external_aliases=("max_shift_px",),
                                 help="Translational search range in px at the working box (0: none).")
    # None (auto): one class per 100 particles, at most 50, merged down to the views the data show.
    classes: int | None = option(
        None, kind=INT, minimum=1, none_words=("auto",),
        help="2D classes to start from (auto: one per 100 particles, at most 50; classes that show one view "
             "are merged, so the number found follows the data; 1: one reference for all particles, no "
             "classification).")
    outlier_method: str = option(
        "ensemble", kind=TEXT, choices=("ensemble", "iforest", "lof", "covariance"), cli_flag="--outliers",
        external_param="outliers", external_aliases=("outlier_method",),
        help="How junk is scored (iforest: isolation forest, lof: local outlier factor, covariance: robust "
             "covariance, ensemble: all three).")
    # The default trades precision against recall on the realistic set; the measured trade-off of nearby
    # thresholds is in benchmarks/README.md ("Figures behind the defaults").
    outlier_threshold: float = option(2.5, kind=FLOAT, external_param="outlier_z",
                                      external_aliases=("outlier_threshold",),
                                      help="Flag particles with rlnParticleSelectZScore above this.")
    # None: the STAR's own defocus
    defocus_range: tuple[float, float] | None = option(
        None, kind=RANGE, external_param="df_range", external_aliases=("defocus_range",),
        help="Defocus range in Å, min and max (5000 25000; as a RELION param 5000,25000), for paper B's "
             "quantile mapping (default: the input's own defocus).")
    per_class: bool = option(False, kind=BOOL,
                             help="Refine and estimate per rlnClassNumber, in each class's own frame.")
    write_canonical: bool = option(
        False, kind=BOOL, external_param="canonical", external_aliases=("write_canonical",),
        help="Add rlnCanonCanonicalImage. With refinement (the default) it names each particle's class average in "
             "class_averages.mrcs (one image per class, shared by its particles; no canonical.mrcs is written); "
             "with --no-refine (refine no) it names the network's own image of each particle, written to "
             "canonical.mrcs.")
    canonical_from: str = option(
        "class", kind=TEXT, choices=("class", "network"), external_param="canon_from",
        external_aliases=("canonical_from",),
        help="With refinement, where --write-canonical takes each particle's canonical image from: 'class', its "
             "class average (one image per class); 'network', its own image from paper A's decoder trained on the "
             "refined angles as labels, written to canonical.mrcs (implies --write-canonical; costs a training "
             "run). The class average is the closer to the truth on the benchmarks (benchmarks/papers).")
    device: str = option("auto", kind=TEXT, not_in={EXTERNAL: _NO_DEVICE_PARAM}, check=device_problem,
                         help="auto, cpu, cuda or cuda:N.")
    seed: int = option(0, kind=INT, minimum=0, help="Random seed (training subset, network, outlier scores).")
    # RELION passes its "Input 3D reference" as --in_3dref, so that is this option's name in the External job.
    ref: str | None = option(
        None, kind=PATH, external_param="in_3dref",
        help="A 3-D reference map (.mrc): each class is matched to a projection direction of it, each particle "
             "of a confidently matched class to its own direction near its class's, and those particles get "
             "rlnAngleRot/Tilt/Psi and their priors for local searches in Refine3D/Class3D.")
    ref_pixel_size: float | None = option(
        None, kind=FLOAT, minimum=1e-3, external_param="ref_angpix", external_aliases=("ref_pixel_size",),
        help="The reference map's voxel size in Å, when its header has none (or to override it).")
    sym: str = option("C1", kind=TEXT, check=symmetry_problem,
                      help="The reference's point group, C1, Cn, Dn, T, O or I (I1-I4; RELION's axes): the "
                           "direction search covers its asymmetric unit only.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
