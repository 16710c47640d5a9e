"""Preprocessing shared by all models: Fourier-crop downsampling, RELION normalisation, soft mask, phase flip."""

from relion_canon.preprocess.fourier import fourier_resample, resampled_pixel_size
from relion_canon.preprocess.mask import apply_mask
from relion_canon.preprocess.normalise import normalise
from relion_canon.preprocess.pipeline import PreprocessConfig, Preprocessor

__all__ = [
    "PreprocessConfig",
    "Preprocessor",
    "apply_mask",
    "fourier_resample",
    "normalise",
    "resampled_pixel_size",
]
