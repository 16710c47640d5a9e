"""Stage 5: each particle's canonical (unrotated, denoised) image.

With refinement the canonical image of a particle is its class's reference: the CTF-corrected,
Wiener-filtered average of the particles turned back, far less noisy than one network output; the references
go to ``class_averages.mrcs``. With ``canonical_from="network"`` each particle gets its own image instead, from
a decoder trained on the refined angles (:mod:`.canonical_network`), in ``canonical.mrcs``. Without refinement
it is the job's network's output, written (when asked) to ``canonical.mrcs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.analysis.estimate.predict import Prediction
from relion_canon.context import RunContext
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import write_stack
from relion_canon.io.star import ParticleStar

CANONICAL_STACK = "canonical.mrcs"
CLASS_AVERAGES = "class_averages.mrcs"


@dataclass
class CanonicalImages:
    """The examples' canonical images (for the figures), the ``rlnCanonCanonicalImage`` column when written,
    and the report's entries."""

    example_canonical: np.ndarray  # (K, H, W)
    column: np.ndarray | None = None  # (N,) "k@stack" names
    report: dict[str, Any] = field(default_factory=dict)


def canonical_images(prediction: Prediction, class_averages: dict[int, np.ndarray], classes: dict[int, np.ndarray],
                     out_dir: Path, box: int, pixel_size_A: float, write_canonical: bool,
                     context: RunContext, per_particle: PerParticle | None = None) -> CanonicalImages:
    """Class averages (when refinement made them) or the network's images, for the examples and, with
    ``write_canonical``, every particle; with ``per_particle`` (refinement's angles) each particle's own image
    from a decoder trained on them (:mod:`.canonical_network`) instead of its class average."""
    if class_averages:
        result = _from_class_averages(len(prediction), prediction.example_index, class_averages, classes, out_dir,
                                      pixel_size_A, write_canonical and per_particle is None)
        if per_particle is not None:
            result.column, trained = per_particle.write(out_dir / CANONICAL_STACK, box, pixel_size_A, context)
            result.report["canonical_images"] = {"file": str(out_dir / CANONICAL_STACK), "from": "network", **trained}
        return result
    column = None
    if write_canonical:
        column = write_network_canonical(prediction, out_dir / CANONICAL_STACK, box, pixel_size_A, context)
    return CanonicalImages(prediction.example_canonical, column)


@dataclass
class PerParticle:
    """What the per-particle decoder learns from: the particles, their refined in-class angles and origins,
    and which of them are good (flagged junk do not train it)."""

    star: ParticleStar
    psi_deg: np.ndarray
    origin_A: np.ndarray | None
    good: np.ndarray  # (N,) bool
    device: str
    seed: int

    def write(self, path: Path, box: int, pixel_size_A: float,
              context: RunContext) -> tuple[np.ndarray, dict[str, Any]]:
        """Train the decoder and write every particle's image: the ``N@path`` names and how it was trained."""
        from relion_canon.analysis.estimate.canonical_network import write_network_canonical_images

        return write_network_canonical_images(self.star, self.psi_deg, self.origin_A, self.good, path, box,
                                              pixel_size_A, device=self.device, seed=self.seed, context=context)


def _from_class_averages(n: int, example_index: np.ndarray, class_averages: dict[int, np.ndarray],
                         classes: dict[int, np.ndarray], out_dir: Path, pixel_size_A: float,
                         write_canonical: bool) -> CanonicalImages:
    numbers = sorted(class_averages)
    path = write_stack(out_dir / CLASS_AVERAGES, np.stack([class_averages[c] for c in numbers]), pixel_size_A)
    position = np.empty(n, dtype=np.int64)  # row → its class's slice of the stack
    for k, number in enumerate(numbers):
        position[classes[number]] = k
    examples = np.stack([class_averages[numbers[k]] for k in position[example_index]])
    column = None
    if write_canonical:
        column = np.array([format_image_name(k, str(path)) for k in position], dtype=object)
    return CanonicalImages(examples, column, {"class_averages": {"file": str(path), "classes": numbers,
                                                          "pixel_size_A": float(pixel_size_A)}})


def write_network_canonical(prediction: Prediction, path: Path, box: int, pixel_size_A: float,
                            context: RunContext) -> np.ndarray:
    """Stream every particle's canonical image (the job's network's, Fourier-padded to the working ``box``) into
    ``path``; return the ``N@path`` names in STAR order."""
    from relion_canon.analysis.estimate.canonical_network import stream_decoded

    model = prediction.loaded.model
    device = next(model.parameters()).device

    def decode(batch: dict) -> np.ndarray:
        ctf = batch["ctf"].to(device) if "ctf" in batch else None
        return model.predict(batch["image"].to(device), ctf=ctf, canonical=True)["canonical"].float().cpu().numpy()

    return stream_decoded(prediction.dataset, decode, path, box, pixel_size_A, context)
