"""cryoSPARC poses <-> RELION angles: 3D rotation vectors <-> ZYZ Euler angles, 2D in-plane poses <-> psi."""

from __future__ import annotations

import numpy as np

from relion_canon.geometry import wrap_deg


def pose3d_to_euler(pose: np.ndarray) -> np.ndarray:
    """(N, 3) cryoSPARC rotation vectors (rad) -> (N, 3) RELION (rot, tilt, psi) in degrees, ZYZ intrinsic.

    RELION's matrix A(rot, tilt, psi) is the transpose of the rotation the vector describes. At tilt 0 or 180°
    only rot ± psi is defined; like pyem we then put it all into psi (rot = 0), the in-plane angle.
    """
    from scipy.spatial.transform import Rotation

    from relion_canon.geometry.projection import euler_angles  # torch: only when poses are converted

    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
    return euler_angles(Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1))


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
