"""CTF modulation of image batches on tensors, for models that render the particle (× CTF) in their losses.

The geometry the models share with the rest of the package (rotation, angle wrapping, masks) lives in
:mod:`relion_canon.geometry`.
"""

from __future__ import annotations

import torch


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply (B, [C,] H, W) images by (B, H, W) CTFs given on the unshifted FFT grid (``relion_canon.ctf``)."""
    if images.dim() == 4:
        ctf = ctf.unsqueeze(1)
    spectrum = torch.fft.fft2(images.float())
    return torch.fft.ifft2(spectrum * ctf.float()).real.to(images.dtype)
