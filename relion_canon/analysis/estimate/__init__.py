"""From a trained model and particles to every per-particle estimate the job writes (the analysis stage).

The stages, one module each, composed by :func:`estimate` (:mod:`.run`):

1. :mod:`.predict`: the network on every particle → psi, latent, examples for the figures;
2. :mod:`.refine`: per class, alignment against the learnt canonical image, defocus fit to it, symmetry, and
   the class's own frame;
3. :mod:`.defocus_columns`: paper B's latent mapping vs the fit;
4. :mod:`.junk`: features → detector scores → outlier flag;
5. :mod:`.canonical`: class averages or the network's canonical images.

The new STAR columns (:data:`COLUMNS`):

* ``rlnClassNumber``: when the job classifies (the default), the 2-D class found, 1 = the largest;
* ``rlnAnglePsi`` / ``rlnAnglePsiPrior``: in-plane angle, degrees in [−180, 180), RELION's convention, in the
  particle's class average's frame;
* with a reference map (``ref``): ``rlnAngleRot/Tilt/Psi`` and their priors are 3-D
  (:mod:`relion_canon.analysis.orientation.priors`), and ``rlnCanonClassPsi`` keeps the in-plane angle in the
  class's frame (what cryoSPARC's ``alignments2D/pose`` gets);
* ``rlnOriginXAngst`` / ``rlnOriginYAngst``: with a translational search (``max_shift_px`` > 0, the default),
  the particle's origin as RELION reads it (its centre sits at box//2 − origin), replacing the input's;
* ``rlnCanonDefocus``: estimated mean defocus in Å (the input's ``rlnDefocusU/V`` are never touched): the
  fit of the particle's CTF to the aligned canonical reference when the job refines, else paper B's;
* ``rlnCanonDefocusLatent``: paper B's estimate (latent polar radius mapped onto the known defocus
  distribution by quantiles, eq. 7), for comparison;
* ``rlnParticleFigureOfMerit``: weight w = exp(def̂ in µm) − 1, as ``relion_reconstruct --fom_weighting`` reads;
* ``rlnParticleSelectZScore``: standardised outlier score, high = likely junk;
* ``rlnCanonIsOutlier``: 1 where the score is above the threshold, else 0;
* ``rlnCanonAlignmentScore``: with refinement, the particle's correlation with the CTF-modulated reference;
* ``rlnCanonCanonicalImage``: with ``write_canonical``, the particle's canonical (unrotated, denoised) image:
  with refinement its class's reference in ``class_averages.mrcs``, else the network's output written to
  ``canonical.mrcs``.

With refinement, ``class_averages.mrcs`` holds the canonical average of each class (one image when not
per class).
"""

from relion_canon.analysis.estimate.canonical import CANONICAL_STACK, CLASS_AVERAGES
from relion_canon.analysis.estimate.junk import OUTLIER_METHODS
from relion_canon.analysis.estimate.predict import N_EXAMPLES
from relion_canon.analysis.estimate.results import COLUMNS, Estimates
from relion_canon.analysis.estimate.run import estimate

__all__ = ["CANONICAL_STACK", "CLASS_AVERAGES", "COLUMNS", "Estimates", "N_EXAMPLES", "OUTLIER_METHODS", "estimate"]
