"""The networks: paper A's rotation-invariant auto-encoder, paper B's VAE-GAN, and the spatial-VAE baseline.

Networks and losses only; no file I/O. Each model subclasses :class:`~relion_canon.models.base.CanonModel`.
"""

from __future__ import annotations

import importlib

from relion_canon.models.base import Batch, CanonModel, ModelConfig

# name → "module:Class"; imported on demand so that `relion-canon --help` stays fast.
MODEL_CLASSES = {
    "rotinv-ae": "relion_canon.models.rotinv_ae:RotInvAE",
    "vaegan": "relion_canon.models.vaegan:VAEGAN",
    "spatial-vae": "relion_canon.models.spatial_vae:SpatialVAE",
}


def model_class(name: str) -> type[CanonModel]:
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_CLASSES)}")
    module, cls = MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["Batch", "CanonModel", "MODEL_CLASSES", "ModelConfig", "model_class"]
