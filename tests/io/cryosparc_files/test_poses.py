"""cryoSPARC poses <-> RELION Euler angles, checked against RELION's own matrix of the angles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from relion_canon.io import cryosparc_files as C
from tests.io.cryosparc_files.helpers import J24


def relion_matrix(euler_deg: np.ndarray) -> np.ndarray:
    """RELION's Euler_angles2matrix (src/euler.cpp), written out independently of the code under test."""
    rot, tilt, psi = np.deg2rad(euler_deg).T
    ca, sa, cb, sb, cg, sg = np.cos(rot), np.sin(rot), np.cos(tilt), np.sin(tilt), np.cos(psi), np.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        np.stack([sc, ss, cb], -1),
    ], -2)


def test_j24_poses_convert_to_relion_euler_angles_and_back(shared_data):
    records = C.load_cs(shared_data / J24)
    pose = records["alignments3D/pose"].astype(np.float64)
    euler = C.pose3d_to_euler(pose)
    # RELION's matrix of the angles is the transpose of the rotation the cryoSPARC vector describes.
    np.testing.assert_allclose(relion_matrix(euler), Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1),
                               atol=1e-9)
    assert euler[:, 1].min() >= 0 and euler[:, 1].max() <= 180
    assert np.all((euler[:, [0, 2]] >= -180) & (euler[:, [0, 2]] < 180))

    back = C.euler_to_pose3d(euler)
    # Vectors longer than π (present in this file) come back as the same rotation the short way round.
    norm = np.linalg.norm(pose, axis=1)
    assert (norm > np.pi).any()
    short = np.where((norm > np.pi)[:, None], -pose * ((2 * np.pi - norm) / norm)[:, None], pose)
    np.testing.assert_allclose(back, short, atol=1e-9)


def test_in_plane_pose_and_gimbal_lock():
    theta = np.array([0.3, 2.0, 4.0, 6.2])
    euler = C.pose3d_to_euler(np.c_[np.zeros((4, 2)), theta])
    np.testing.assert_allclose(euler[:, :2], 0, atol=1e-12)  # all of it in psi, as for a 2D pose
    np.testing.assert_allclose(euler[:, 2], C.pose2d_to_psi(theta))
    upside = Rotation.from_euler("ZYZ", [[30, 180, 70]], degrees=True).as_rotvec()
    e = C.pose3d_to_euler(upside)
    assert e[0, 0] == 0 and e[0, 1] == pytest.approx(180)
    np.testing.assert_allclose(relion_matrix(e), Rotation.from_rotvec(upside).as_matrix().transpose(0, 2, 1),
                               atol=1e-9)
