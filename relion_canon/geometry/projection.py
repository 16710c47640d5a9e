"""Fourier-slice projection of a 3D map in RELION's conventions, batched on torch.

Conventions (each checked against ``relion_project`` in ``tests/simulate/test_simulate_vs_relion.py``):

* The volume is an MRC-order array ``(z, y, x)``; its centre is voxel ``n // 2`` on every axis, as in RELION.
* A = ``euler_matrix(rot, tilt, psi)`` is RELION's ``Euler_angles2matrix`` (ZYZ) and the projection is
  P(r) = ∫ V(Aᵀ (x, y, z)) dz: the 2D Fourier sample at (kx, ky) is the 3D transform at Aᵀ (kx, ky, 0).
* An origin (rlnOriginX/YAngst) moves the projected particle by **minus** the origin, so shifting an image by
  +origin re-centres it; the image centre is pixel ``n // 2``.
* The CTF multiplies the Fourier transform (``relion_canon.ctf.ctf_2d``, positive at low frequency).

Like RELION's projector, the map is zero-padded (factor 2), corrected for the trilinear-interpolation kernel
(divided by sinc²) and its transform is sampled by trilinear interpolation up to Nyquist (a disc of radius n/2).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from relion_canon.geometry.angles import wrap_deg


def euler_matrix(rot: np.ndarray | float, tilt: np.ndarray | float, psi: np.ndarray | float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (angles in degrees), shape (..., 3, 3)."""
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


# Radians of tilt from 0 or 180° below which rot and psi are one rotation about z.
_GIMBAL_EPS = 1e-6


def euler_angles(matrix: np.ndarray) -> np.ndarray:
    """(..., 3) RELION (rot, tilt, psi) in degrees of (..., 3, 3) matrices: the inverse of :func:`euler_matrix`.
    rot and psi in [−180, 180), tilt in [0, 180]. At tilt 0 or 180° only rot ± psi is defined; it all goes into
    psi (rot = 0), the in-plane angle, as pyem does."""
    from scipy.spatial.transform import Rotation  # scipy's import costs start-up: only when angles are read back

    m = np.asarray(matrix, dtype=np.float64)
    shape = m.shape[:-2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's gimbal-lock warning: handled below
        # RELION's matrix is the transpose of the rotation scipy's intrinsic ZYZ angles describe.
        euler = Rotation.from_matrix(np.swapaxes(m.reshape(-1, 3, 3), -1, -2)).as_euler("ZYZ")
    rot, tilt, psi = euler.T.copy()
    flat = np.abs(tilt) < _GIMBAL_EPS
    psi[flat], rot[flat] = psi[flat] + rot[flat], 0.0
    upside = np.abs(tilt - np.pi) < _GIMBAL_EPS
    psi[upside], rot[upside] = psi[upside] - rot[upside], 0.0
    out = np.rad2deg(np.stack([rot, tilt, psi], axis=1))
    out[:, 0], out[:, 2] = wrap_deg(out[:, 0]), wrap_deg(out[:, 2])
    return out.reshape(*shape, 3)


def half_grid(box: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (kx, ky) of the ``rfft2`` layout of a box² image: rows in FFT order, columns 0..box//2."""
    ky = np.fft.fftfreq(box, d=1.0 / box)
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    return np.meshgrid(kx, ky, indexing="xy")


def shift_phase(box: int, shifts_px: np.ndarray) -> np.ndarray | None:
    """Phase factors (n, box, box//2+1) that move image content by ``shifts_px`` (n, 2) = (dx, dy) pixels;
    ``None`` when no image moves (the common unshifted case costs nothing)."""
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if not np.any(s):
        return None
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    ky = np.fft.fftfreq(box, d=1.0 / box)
    # The ramp is separable: exp(−2πi (kx dx + ky dy)/box) = row factor × column factor.
    px = np.exp(-2j * np.pi * kx[None, :] * s[:, 0, None] / box)
    py = np.exp(-2j * np.pi * ky[None, :] * s[:, 1, None] / box)
    return (py[:, :, None] * px[:, None, :]).astype(np.complex64)


def images_from_half(f2: torch.Tensor, box: int) -> torch.Tensor:
    """Real images (n, box, box) centred at ``box // 2`` from half transforms whose origin is pixel 0."""
    img = torch.fft.irfft2(f2, s=(box, box))
    return torch.fft.fftshift(img, dim=(-2, -1))


def half_from_images(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`images_from_half`."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


class FourierProjector:
    """Projections of one cubic map: ``project(rot, tilt, psi, shifts, ctf)`` → (n, box, box) float32.

    Projections are line integrals in voxel units (the image sums to the map's sum), so maps keep their scale.
    """

    def __init__(self, volume: np.ndarray, pad: int = 2, chunk: int = 256):
        vol = np.asarray(volume, dtype=np.float64)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"expected a cubic 3D volume, got shape {vol.shape}")
        n = vol.shape[0]
        self.box = n
        self.pad = pad
        self.chunk = chunk
        big = pad * n
        # Divide by the transform of the trilinear kernel (sinc²) so that interpolation does not damp high
        # frequencies; RELION's griddingCorrect does the same before padding.
        z, y, x = np.ogrid[:n, :n, :n]
        r = np.sqrt((z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2) / big
        vol = vol / np.sinc(r) ** 2
        padded = np.zeros((big, big, big), dtype=np.float32)
        lo = big // 2 - n // 2
        padded[lo : lo + n, lo : lo + n, lo : lo + n] = vol
        f3 = torch.fft.rfftn(torch.fft.ifftshift(torch.from_numpy(padded)))
        del padded
        f3 = torch.fft.fftshift(f3, dim=(0, 1))
        # Two extra planes on every side that trilinear corners can reach at |k| = n/2.
        self._centre = big // 2
        store = torch.zeros((big + 2, big + 2, big // 2 + 3), dtype=torch.complex64)
        store[:big, :big, : big // 2 + 1] = f3
        self._f3 = store.reshape(-1)
        sz_, sy_ = (big + 2) * (big // 2 + 3), big // 2 + 3
        self._strides = (sz_, sy_, 1)
        self._dims = (big + 2, big + 2, big // 2 + 3)
        kx, ky = half_grid(n)
        # Only frequencies inside the Nyquist disc are sampled (RELION's r_max = n/2); the rest stay zero.
        inside = ((kx**2 + ky**2) <= (n / 2) ** 2).reshape(-1)
        self._inside_idx = torch.from_numpy(np.flatnonzero(inside))
        self._kx_in = torch.from_numpy(kx.reshape(-1)[inside].astype(np.float32))[None]
        self._ky_in = torch.from_numpy(ky.reshape(-1)[inside].astype(np.float32))[None]
        self._max_base = store.numel() - 1 - (sz_ + sy_ + 1)

    def slices(self, matrices: np.ndarray, max_ring: float | None = None) -> torch.Tensor:
        """Central slices (n, box, box//2+1) complex64 for rotation matrices (n, 3, 3); with ``max_ring`` only
        the frequencies within that radius (cycles per box) are sampled, the rest left 0 (a low-pass search
        pays only for what it compares)."""
        out = []
        a = torch.from_numpy(np.asarray(matrices, dtype=np.float32).reshape(-1, 3, 3))
        within = None
        if max_ring is not None and max_ring < self.box / 2:
            within = torch.from_numpy(((self._kx_in**2 + self._ky_in**2) <= max_ring**2).numpy()[0])
        for start in range(0, a.shape[0], self.chunk):
            out.append(self._slices(a[start : start + self.chunk], within))
        if not out:
            return torch.zeros((0, self.box, self.box // 2 + 1), dtype=torch.complex64)
        return torch.cat(out)

    def _slices(self, a: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
        n_img = a.shape[0]
        kx, ky, inside_idx = self._kx_in, self._ky_in, self._inside_idx
        if within is not None:
            kx, ky, inside_idx = kx[:, within], ky[:, within], inside_idx[within]
        # Aᵀ (kx, ky, 0) = kx · A[0, :] + ky · A[1, :], components (fx, fy, fz), in padded-grid units.
        a = a * self.pad
        fx = kx * a[:, 0, 0, None] + ky * a[:, 1, 0, None]
        fy = kx * a[:, 0, 1, None] + ky * a[:, 1, 1, None]
        fz = kx * a[:, 0, 2, None] + ky * a[:, 1, 2, None]
        # Only the half space fx ≥ 0 is stored; use Friedel symmetry F(−k) = conj F(k) for the rest.
        flip = fx < 0
        sign = 1.0 - 2.0 * flip.to(fx.dtype)
        fx = fx * sign
        fy = fy * sign + self._centre
        fz = fz * sign + self._centre
        x0, y0, z0 = fx.floor(), fy.floor(), fz.floor()
        wx, wy, wz = fx - x0, fy - y0, fz - z0
        sz, sy, _ = self._strides
        base = (z0 * sz + y0 * sy + x0).long().clamp_(0, self._max_base).reshape(-1)
        f3 = self._f3
        res = None
        for dz, wz_ in ((0, 1 - wz), (1, wz)):
            for dy, wy_ in ((0, 1 - wy), (1, wy)):
                w_zy = (wz_ * wy_).reshape(-1)
                off = dz * sz + dy * sy
                c0 = torch.index_select(f3, 0, base + off)
                c1 = torch.index_select(f3, 0, base + (off + 1))
                wxf = wx.reshape(-1)
                term = (c0 + wxf * (c1 - c0)) * w_zy
                res = term if res is None else res.add_(term)
        res = res.reshape(n_img, -1)
        res = torch.where(flip, res.conj(), res)
        out = torch.zeros((n_img, self.box * (self.box // 2 + 1)), dtype=torch.complex64)
        out[:, inside_idx] = res
        return out.reshape(n_img, self.box, self.box // 2 + 1)

    def project(
        self,
        rot: np.ndarray | float,
        tilt: np.ndarray | float,
        psi: np.ndarray | float,
        shifts_px: np.ndarray | None = None,
        ctf: np.ndarray | None = None,
    ) -> np.ndarray:
        """Projections (n, box, box) float32; ``shifts_px`` (n, 2) move the content by (dx, dy) pixels
        (pass −origin/pixel size for a RELION origin); ``ctf`` (n, box, box//2+1) multiplies the transform."""
        f2 = self.slices(euler_matrix(rot, tilt, psi))
        phase = None if shifts_px is None else shift_phase(self.box, shifts_px)
        if phase is not None:
            f2 = f2 * torch.from_numpy(phase)
        if ctf is not None:
            f2 = f2 * torch.from_numpy(np.asarray(ctf, dtype=np.float32))
        return images_from_half(f2, self.box).numpy()
