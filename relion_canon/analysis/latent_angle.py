"""Paper B's read-out of the in-plane angle (and the radius that later gives defocus) from a latent space.

After training the VAE-GAN with its cone regulariser, the latent means of one view lie near a cone whose
axis carries defocus and whose circular sections carry the in-plane angle. Paper B (Sec. 3.2.2, eq. 6)
runs a PCA of the latent means, keeps the first two principal components (the "reduced space") and reads
the angle and the radius off their polar coordinates. The angle has an arbitrary zero and direction;
compare it with truth through :func:`relion_canon.analysis.metrics.align_angles` (eq. 8). The radius is
mapped to defocus by quartile matching (eq. 7), which is not done here.
"""

from __future__ import annotations

import numpy as np


def polar_readout(latent: np.ndarray, whiten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Polar coordinates of the first two principal components of (N, L) latent means.

    Returns ``(angle, radius)``, both (N,): the angle in radians in (−π, π], the radius ≥ 0.

    With ``whiten`` (the paper's choice: it uses the columns of U in Z − mean = UΣVᵀ, not UΣ) each of the
    two components is scaled to unit variance first, which makes a slightly elliptical ring round and so
    spreads the angles evenly; the radius is then in units of the components' standard deviation. Without
    it the radius is the distance in latent units. PCA signs follow scikit-learn's rule (the largest
    loading of each component is positive), so the result does not depend on the LAPACK build.
    """
    z = np.asarray(latent, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"latent must be (N, L) with L >= 2, got shape {z.shape}")
    if z.shape[0] < 3:
        raise ValueError(f"need at least 3 latent points for a PCA, got {z.shape[0]}")
    if not np.all(np.isfinite(z)):
        raise ValueError("latent contains NaN or infinite values")
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    biggest = np.argmax(np.abs(components), axis=1)
    components = components * np.sign(components[np.arange(2), biggest])[:, None]
    scores = centred @ components.T  # (N, 2) = first two columns of UΣ
    if whiten:
        scale = s[:2] / np.sqrt(max(z.shape[0] - 1, 1))  # component standard deviations
        scores = scores / np.where(scale > 0, scale, 1.0)
    angle = np.arctan2(scores[:, 1], scores[:, 0])
    radius = np.hypot(scores[:, 0], scores[:, 1])
    return angle, radius
