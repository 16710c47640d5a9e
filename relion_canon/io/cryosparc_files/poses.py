"""cryoSPARC poses <-> RELION angles: 3D rotation vectors <-> ZYZ Euler angles, 2D in-plane poses <-> psi."""

from __future__ import annotations

import warnings

import numpy as np

from relion_canon.geometry import wrap_deg

_GIMBAL_EPS = 1e-6  # radians of tilt from 0 or 180° below which rot and psi are one rotation about z


def pose3d_to_euler(pose: np.ndarray) -> np.ndarray:
    """(N, 3) cryoSPARC rotation vectors (rad) -> (N, 3) RELION (rot, tilt, psi) in degrees, ZYZ intrinsic.

    RELION's matrix A(rot, tilt, psi) is the transpose of the rotation the vector describes. At tilt 0 or 180°
    only rot ± psi is defined; like pyem we then put it all into psi (rot = 0), the in-plane angle.
    """
    from scipy.spatial.transform import Rotation

    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's gimbal-lock warning: handled below
        euler = Rotation.from_rotvec(pose).as_euler("ZYZ")
    rot, tilt, psi = euler.T.copy()
    flat = np.abs(tilt) < _GIMBAL_EPS
    psi[flat], rot[flat] = psi[flat] + rot[flat], 0.0
    upside = np.abs(tilt - np.pi) < _GIMBAL_EPS
    psi[upside], rot[upside] = psi[upside] - rot[upside], 0.0
    out = np.rad2deg(np.stack([rot, tilt, psi], axis=1))
    out[:, 0] = wrap_deg(out[:, 0])
    out[:, 2] = wrap_deg(out[:, 2])
    return out


def euler_to_pose3d(euler: np.ndarray) -> np.ndarray:
    """(N, 3) RELION (rot, tilt, psi) in degrees -> (N, 3) cryoSPARC rotation vectors (rad, norm ≤ π)."""
    from scipy.spatial.transform import Rotation

    euler = np.asarray(euler, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_euler("ZYZ", euler, degrees=True).as_rotvec()


def pose2d_to_psi(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC in-plane pose (rad) -> RELION psi (degrees in [−180, 180)); same sense, as pyem converts it."""
    return wrap_deg(np.rad2deg(np.asarray(pose, dtype=np.float64)))


def psi_to_pose2d(psi: np.ndarray) -> np.ndarray:
    """RELION psi (degrees) -> cryoSPARC in-plane pose in radians in [0, 2π)."""
    pose = np.deg2rad(np.asarray(psi, dtype=np.float64)) % (2 * np.pi)
    return np.where(pose >= 2 * np.pi, 0.0, pose)  # float rounding can give exactly 2π
