"""The contrast transfer function, in RELION's convention (positive defocus = underfocus, angles in degrees).

Matches RELION's ``CTF::getCTF``: χ = π λ Δf(φ) k² − (π/2) C_s λ³ k⁴ + phase shift + arctan(Q/√(1−Q²)),
CTF = sin(χ) · exp(−B k²/4), so that the CTF is +Q at k = 0 and positive at low frequency (RELION's images
have protein white). Arrays broadcast over leading particle dimensions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np


def electron_wavelength(voltage_kv: float | np.ndarray) -> np.ndarray:
    """Relativistic electron wavelength in Å."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def frequency_grid(box: int, pixel_size: float, rfft: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(kx, ky) in 1/Å on the unshifted FFT grid (origin at [0, 0]); ``rfft`` gives the half grid of ``rfft2``.

    kx runs along columns (image x), ky along rows (image y), as RELION's X and Y in ``CTF::getCTF``.
    """
    ky = np.fft.fftfreq(box, d=pixel_size)
    kx = np.fft.rfftfreq(box, d=pixel_size) if rfft else np.fft.fftfreq(box, d=pixel_size)
    return np.meshgrid(kx, ky, indexing="xy")


@functools.lru_cache(maxsize=16)
def _polar_grid(box: int, pixel_size: float, rfft: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k², cos 2φ, sin 2φ) of the frequency grid, φ = atan2(ky, kx); cached, read-only."""
    kx, ky = frequency_grid(box, pixel_size, rfft)
    k2 = kx**2 + ky**2
    angle = np.arctan2(ky, kx)
    out = (k2, np.cos(2.0 * angle), np.sin(2.0 * angle))
    for a in out:
        a.setflags(write=False)
    return out


def ctf_2d(
    box: int,
    pixel_size: float,
    defocus_u: float | np.ndarray,
    defocus_v: float | np.ndarray,
    defocus_angle: float | np.ndarray,
    voltage: float | np.ndarray,
    cs: float | np.ndarray,
    amplitude_contrast: float | np.ndarray,
    phase_shift: float | np.ndarray = 0.0,
    bfactor: float | np.ndarray = 0.0,
    rfft: bool = False,
    phase_only: bool = False,
) -> np.ndarray:
    """CTF on the FFT grid of a ``box``² image, shape (..., box, box) or (..., box, box//2+1) with ``rfft``.

    Defocus in Å, defocus angle and phase shift in degrees, voltage in kV, Cs in mm, B-factor in Å².
    Leading dimensions come from broadcasting the per-particle parameters. With ``phase_only`` the
    phase χ (radians) is returned instead of sin χ, without the B-factor envelope.
    """
    k2, cos2, sin2 = _polar_grid(int(box), float(pixel_size), bool(rfft))

    def per(x):  # per-particle scalar -> (..., 1, 1) so it broadcasts over the grid
        return np.asarray(x, dtype=np.float64)[..., None, None]

    lam = per(electron_wavelength(voltage))
    dfu, dfv, azimuth = per(defocus_u), per(defocus_v), np.deg2rad(per(defocus_angle))
    # Δf(φ) = mean + half-difference · cos 2(φ − azimuth), expanded so the grid trigonometry is done once.
    half_diff = 0.5 * (dfu - dfv)
    defocus = 0.5 * (dfu + dfv) + half_diff * np.cos(2.0 * azimuth) * cos2 + half_diff * np.sin(2.0 * azimuth) * sin2
    q = per(amplitude_contrast)
    # χ = π λ Δf k² − (π/2) Cs λ³ k⁴ + phase shift + arctan(Q/√(1−Q²)); RELION's getCTF returns −sin(−χ) = sin χ.
    chi = (
        (np.pi * lam * defocus - 0.5 * np.pi * per(cs) * 1e7 * lam**3 * k2) * k2
        + np.deg2rad(per(phase_shift))
        + np.arctan2(q, np.sqrt(1.0 - q**2))
    )
    if phase_only:
        return chi
    ctf = np.sin(chi)
    b = per(bfactor)
    if np.any(b != 0):
        ctf = ctf * np.exp(-b * k2 / 4.0)
    return ctf


@dataclass(frozen=True)
class CtfParams:
    """Per-particle CTF parameters in RELION units (arrays of length N)."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    defocus_angle: np.ndarray  # degrees
    voltage: np.ndarray  # kV
    cs: np.ndarray  # mm
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray  # degrees
    bfactor: np.ndarray  # Å²

    def __len__(self) -> int:
        return len(self.defocus_u)

    def take(self, indices: np.ndarray) -> "CtfParams":
        return CtfParams(**{f.name: getattr(self, f.name)[indices] for f in fields(self)})

    def ctf(self, box: int, pixel_size: float | np.ndarray, rfft: bool = False) -> np.ndarray:
        """(N, box, box) CTFs of the particles held (take() a batch first).

        ``pixel_size`` is one value or one per particle (optics groups may differ); the grid is built once
        per distinct value.
        """
        px = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (len(self),))
        width = box // 2 + 1 if rfft else box
        out = np.empty((len(self), box, width), np.float64)
        for value in np.unique(px):
            sel = px == value
            out[sel] = ctf_2d(
                box,
                float(value),
                self.defocus_u[sel],
                self.defocus_v[sel],
                self.defocus_angle[sel],
                self.voltage[sel],
                self.cs[sel],
                self.amplitude_contrast[sel],
                self.phase_shift[sel],
                self.bfactor[sel],
                rfft=rfft,
            )
        return out
