"""The preprocessing every model shares: optional CTF phase flip, Fourier-crop, normalise, soft mask.

Its parameters travel with a trained model (see :meth:`PreprocessConfig.to_dict`), so prediction applies
exactly what training saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from relion_canon.ctf import CtfParams
from relion_canon.preprocess.fourier import fourier_resample
from relion_canon.preprocess.mask import apply_mask
from relion_canon.preprocess.normalise import DEFAULT_BG_FRACTION, normalise


@dataclass(frozen=True)
class PreprocessConfig:
    box: int | None = None  # target box in px after Fourier cropping; None keeps the input box
    normalise: bool = True
    bg_radius_fraction: float = DEFAULT_BG_FRACTION  # background circle, as a fraction of the image radius
    ramp: bool = True  # subtract a fitted background plane first, as relion_preprocess does by default
    mask_radius_fraction: float | None = None  # soft circular mask, fraction of the image radius; None = no mask
    mask_edge: float = 3.0  # px of raised-cosine edge, at the output box
    phase_flip: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Preprocessor:
    """Applies a :class:`PreprocessConfig` to batches of one dataset.

    ``pixel_size`` holds one value per particle (optics groups may differ); ``ctf`` is needed only for
    phase flipping.
    """

    def __init__(
        self,
        config: PreprocessConfig,
        box: int,
        pixel_size: np.ndarray,
        ctf: CtfParams | None = None,
    ):
        if config.phase_flip and ctf is None:
            raise ValueError("phase flipping needs the particles' CTF parameters")
        if config.box is not None and config.box > box:
            raise ValueError(f"cannot downsample {box} px images to a larger box of {config.box} px")
        self.config = config
        self.in_box = box
        self.out_box = config.box or box
        self.in_pixel_size = np.asarray(pixel_size, dtype=np.float64).reshape(-1)
        if ctf is not None and len(ctf) != len(self.in_pixel_size):
            raise ValueError(f"{len(ctf)} CTF parameter sets for {len(self.in_pixel_size)} pixel sizes")
        self.ctf = ctf

    @property
    def out_pixel_size(self) -> np.ndarray:
        return self.in_pixel_size * self.in_box / self.out_box

    def _phase_flips(self, indices: np.ndarray) -> np.ndarray:
        ctf = self.ctf.take(indices)  # type: ignore[union-attr]
        return np.sign(ctf.ctf(self.in_box, self.in_pixel_size[indices])).astype(np.float32)

    def __call__(self, images: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """(B, in_box, in_box) raw images of particles ``indices`` → (B, out_box, out_box) float32."""
        cfg = self.config
        multiplier = None
        if cfg.phase_flip:
            if indices is None:
                raise ValueError("phase flipping needs the particle indices of the batch")
            multiplier = self._phase_flips(np.asarray(indices))
        out = fourier_resample(images, self.out_box, multiplier)
        if cfg.normalise:
            out = normalise(out, cfg.bg_radius_fraction * self.out_box / 2, ramp=cfg.ramp)
        if cfg.mask_radius_fraction is not None:
            out = apply_mask(out, cfg.mask_radius_fraction * self.out_box / 2, cfg.mask_edge)
        return out
