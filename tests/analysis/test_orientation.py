"""Per-class orientation by projection matching (relion_canon.analysis.orientation): RELION's Euler convention
recovered from the simulator's own projections, mirrors, symmetry (reduced search; look-alike views flagged),
the per-particle composition, and the accuracy on a simulated 8-view set at SNR 0.05."""

from __future__ import annotations

import numpy as np
import mrcfile
import pytest

from relion_canon.analysis.estimate.refine import ctf_or_none, refine_classes
from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.estimate_config import EstimateConfig
from relion_canon.analysis.orientation import NO_PRIOR, ClassMatch, Matcher, orient_classes, particle_orientations
from relion_canon.analysis.orientation.directions import patch, sphere_grid
from relion_canon.analysis.orientation.point_group import (
    direction_distance_deg,
    directions,
    group_matrices,
    in_asymmetric_unit,
    orientation_distance_deg,
    symmetry_problem,
    to_asymmetric_unit,
)
from relion_canon.context import QUIET
from relion_canon.geometry import rotate_images, wrap_deg
from relion_canon.io.mrc import read_map
from relion_canon.io.star import read_star
from relion_canon.simulate import SimulationConfig, euler_matrix, load_source, read_ground_truth, simulate_dataset
from relion_canon.geometry.volume import lowpass_map

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RIBOSOME = "maps/clean70SRibosome_vol_65p.mrc"  # no voxel size in its header
RIBOSOME_APIX = 4.0  # Å: a 260 Å box, about a 70S ribosome's size


@pytest.fixture(scope="module")
def ribosome(shared_data):
    return shared_data / RIBOSOME


@pytest.fixture(scope="module")
def matcher(ribosome):
    volume = load_source(ribosome, 32, 8.0, map_pixel_size=RIBOSOME_APIX).data
    return Matcher(volume, 8.0)


# --- point groups and grids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, order", [("C1", 1), ("C4", 4), ("d2", 4), ("D7", 14), ("T", 12), ("O", 24),
                                         ("I", 60), ("i1", 60), ("I3", 60), ("I4", 60)])
def test_groups_are_closed_rotations(name, order):
    g = group_matrices(name)
    assert len(g) == order
    np.testing.assert_allclose(g[0], np.eye(3))
    np.testing.assert_allclose(g @ g.transpose(0, 2, 1), np.broadcast_to(np.eye(3), g.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(g), 1.0)
    products = (g[:, None] @ g[None]).reshape(-1, 9)
    # Closed: exactly for Cn/Dn; to 1e-5 for T, O, I, whose axes RELION writes with 6-10 digits.
    assert all(np.abs(products[:, None] - g.reshape(1, -1, 9)).max(axis=2).min(axis=1) < 1e-5)
    distinct = np.abs(g.reshape(-1, 1, 9) - g.reshape(1, -1, 9)).max(axis=2) + np.eye(order)
    assert distinct.min() > 0.1  # no element twice


def _relion_symmetry_ops(symmetry: str) -> np.ndarray:
    """The operators RELION itself uses for ``symmetry`` (``relion_refine --print_symmetry_ops``)."""
    import re
    import subprocess

    text = subprocess.run(["relion_refine", "--print_symmetry_ops", "--sym", symmetry], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    blocks = re.split(r"R\(\d+\)=", text)[1:]
    number = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
    return np.stack([np.array([float(x) for x in re.findall(number, b.split("Euler")[0])][:9]).reshape(3, 3)
                     for b in blocks])


@pytest.mark.parametrize("name", ["D3", "T", "O", "I", "I1", "I2", "I3", "I4"])
def test_groups_are_relions_own(require_relion, name):
    """The same set of matrices, element for element, as RELION 3.1's symmetry library builds."""
    ours, relions = group_matrices(name), _relion_symmetry_ops(name)
    assert len(ours) == len(relions)
    gap = np.abs(ours[:, None] - relions[None]).max(axis=(2, 3))
    assert gap.min(axis=0).max() < 1e-4 and gap.min(axis=1).max() < 1e-4  # RELION prints 5-8 digits


@pytest.mark.parametrize("name", ["T", "O", "I", "I3"])
def test_a_direction_and_its_symmetry_mates_share_one_asymmetric_unit_point(name):
    g = group_matrices(name)
    d = directions(np.random.default_rng(3).uniform(-180, 180, 20),
                   np.rad2deg(np.arccos(np.random.default_rng(4).uniform(-1, 1, 20))))
    unit = to_asymmetric_unit(d, g)
    assert in_asymmetric_unit(unit, g).all()
    np.testing.assert_allclose(direction_distance_deg(unit, d, g), 0.0, atol=1e-5)  # a mate of its own
    for s in g:
        np.testing.assert_allclose(to_asymmetric_unit(d @ s, g), unit, atol=1e-5)  # d @ s = Sᵀd, row-wise


def test_dn_has_its_two_fold_along_x_as_relion():
    assert any(np.allclose(m, np.diag([1.0, -1.0, -1.0])) for m in group_matrices("D3"))


@pytest.mark.parametrize("value, words", [("I5", "C1, Cn, Dn, T, O or I"), ("TD", "C1, Cn, Dn, T, O or I"),
                                          ("C0", "between 1 and"), ("X5", "C1, Cn, Dn, T, O or I")])
def test_groups_not_handled_are_named(value, words):
    assert words in symmetry_problem(value)


@pytest.mark.parametrize("name", ["C1", "C3", "D2", "D5", "T", "O", "I"])
def test_the_asymmetric_unit_tiles_the_sphere(name):
    g = group_matrices(name)
    points = sphere_grid(2.0, group_matrices("C1"))
    kept = in_asymmetric_unit(points, g)
    assert abs(kept.mean() - 1 / len(g)) < 0.02
    # Every direction has a symmetry mate in the unit.
    unit = points[kept]
    mates = np.einsum("gji,nj->ngi", g, points[::37])
    nearest = np.rad2deg(np.arccos(np.clip(mates @ unit.T, -1, 1))).min(axis=(1, 2))
    assert nearest.max() < 3.0


def test_patch_is_centred_and_spaced():
    centre = np.array([0.2, -0.5, 0.8]) / np.linalg.norm([0.2, -0.5, 0.8])
    points = patch(centre, 1.0, 3.0)
    np.testing.assert_allclose(points[0], centre)
    distance = direction_distance_deg(points, centre)
    assert distance.max() <= 3.0 + 1e-6 and len(points) == 29


# --- matching -----------------------------------------------------------------------------------------------


def test_euler_convention_recovered_from_the_simulators_projections(matcher):
    """Projections at known (rot, tilt, psi), moved off-centre, matched back: RELION's angles and the shift."""
    rng = np.random.default_rng(1)
    shift = np.array([1.0, -0.5])
    for _ in range(4):
        rot, tilt, psi = rng.uniform(-180, 180), np.rad2deg(np.arccos(rng.uniform(-1, 1))), rng.uniform(-180, 180)
        image = matcher.projector.project(rot, tilt, psi, shift[None])[0]
        found = matcher.match(image)
        error = orientation_distance_deg(euler_matrix(rot, tilt, psi),
                                         euler_matrix(found.rot_deg, found.tilt_deg, found.psi_deg))
        assert error < 1.5, (rot, tilt, psi, found)
        assert np.abs(np.array(found.shift_px) - shift).max() < 0.25
        assert not found.ambiguous and found.peak > 0.9 and found.margin > 0.2


def test_a_mirrored_class_average_is_matched_to_its_own_direction(matcher):
    """A mirror image is a projection from another direction: searching the whole sphere finds it."""
    image = matcher.projector.project(40.0, 70.0, 10.0)[0]
    mirrored = np.roll(image[:, ::-1], 1, axis=1)  # mirrored about the column box//2
    found = matcher.match(mirrored)
    again = matcher.projection(found)
    assert np.corrcoef(again.ravel(), mirrored.ravel())[0, 1] > 0.97
    assert direction_distance_deg(directions(found.rot_deg, found.tilt_deg), directions(40.0, 70.0)) > 20


def _c2_symmetrised(volume: np.ndarray) -> np.ndarray:
    """The map averaged with itself turned by 180° about z, about voxel n//2 (RELION's centre)."""
    turned = np.roll(np.flip(volume, axis=(1, 2)), 1, axis=(1, 2))
    return 0.5 * (volume + turned)


def test_views_alike_along_a_symmetry_axis_are_flagged_then_resolved_by_the_symmetry(ribosome):
    volume = _c2_symmetrised(load_source(ribosome, 32, 8.0, map_pixel_size=RIBOSOME_APIX).data)
    as_c1, as_c2 = Matcher(volume, 8.0, "C1"), Matcher(volume, 8.0, "C2")
    assert abs(len(as_c2.coarse) / len(as_c1.coarse) - 0.5) < 0.03  # the search covers half the sphere
    side_view = as_c1.projector.project(30.0, 80.0, -20.0)[0]
    found = as_c1.match(side_view)
    assert found.ambiguous and "matches almost as well" in found.reason
    found = as_c2.match(side_view)
    assert not found.ambiguous
    error = orientation_distance_deg(euler_matrix(30.0, 80.0, -20.0),
                                     euler_matrix(found.rot_deg, found.tilt_deg, found.psi_deg), group_matrices("C2"))
    assert error < 2.0


def _blobs(group: np.ndarray, seeds: list[tuple[tuple[float, float, float], float]], n: int = 32) -> np.ndarray:
    """A map with exactly the group's symmetry: a Gaussian blob at every S·p of each seed point p (px from
    voxel n//2, RELION's centre), weighted. Structured enough at 32 px for the views to differ, unlike a
    real map averaged over 24 turns, which is nearly a ball."""
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    volume = np.zeros((n, n, n))
    for point, weight in seeds:
        for q in group @ np.asarray(point, dtype=np.float64):
            volume += weight * np.exp(-((x - q[0]) ** 2 + (y - q[1]) ** 2 + (z - q[2]) ** 2) / (2 * 1.3**2))
    return volume


@pytest.mark.parametrize("name", ["T", "O"])
def test_a_polyhedral_map_is_searched_over_its_asymmetric_unit(name):
    """T and O: the coarse grid covers 1/|G| of the sphere, and views are matched to orientations equal to the
    truth under the group."""
    g = group_matrices(name)
    volume = _blobs(g, [((7.0, 3.0, 2.0), 1.0), ((2.0, -4.0, 9.0), 0.6)])
    matcher = Matcher(volume, 8.0, name)
    full = len(sphere_grid(matcher.config.coarse_step_deg, group_matrices("C1")))
    assert abs(len(matcher.coarse) / full - 1 / len(g)) < 0.01
    for rot, tilt, psi in [(-70.0, 65.0, 35.0), (120.0, 140.0, -100.0)]:
        found = matcher.match(matcher.projector.project(rot, tilt, psi)[0])
        error = orientation_distance_deg(euler_matrix(rot, tilt, psi),
                                         euler_matrix(found.rot_deg, found.tilt_deg, found.psi_deg), g)
        assert error < 2.0 and not found.ambiguous, (name, rot, tilt, psi, found)


def test_noise_is_no_view(matcher):
    found = matcher.match(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32))
    assert found.ambiguous


# --- per particle -------------------------------------------------------------------------------------------


def _match(rot, tilt, psi, shift=(0.0, 0.0), ambiguous=False) -> ClassMatch:
    return ClassMatch(rot, tilt, psi, shift, 0.9, 0.5, 0.0, 0.0, np.ones(17), 10.0, ambiguous, "")


def test_particles_get_their_class_direction_and_their_own_psi_plus_the_offset(matcher):
    """A particle made as its class average turned by ψ and moved by t (the alignment's model), with the class
    average the projection at (rot, tilt, α) moved by s, is the projection at the angles and origin written."""
    alpha, s = 25.0, (0.75, -0.5)
    average = matcher.projector.project(60.0, 100.0, alpha, np.array([s]))[0]
    psi = np.array([30.0, -170.0, 95.0])
    t = np.array([[1.0, 0.0], [-0.5, 1.5], [0.0, 0.0]])
    pixel = 8.0
    particles = rotate_images(np.repeat(average[None], 3, 0), psi, order=3, shift_px=t)
    out = particle_orientations(psi, -t * pixel, pixel, {1: np.arange(3)}, {1: _match(60.0, 100.0, alpha, s)})
    assert out.has_prior.all()
    np.testing.assert_allclose(out.rot_deg, 60.0)
    np.testing.assert_allclose(out.psi_deg, wrap_deg(psi + alpha))
    remade = matcher.projector.project(out.rot_deg, out.tilt_deg, out.psi_deg, -out.origin_A / pixel)
    for a, b in zip(particles, remade):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_junk_and_unmatched_classes_get_relions_no_prior_value():
    classes = {1: np.array([0, 1]), 2: np.array([2, 3]), 3: np.array([4])}
    junk = np.array([False, True, False, False, False])
    out = particle_orientations(np.array([10.0, 20.0, 30.0, 40.0, 50.0]), None, 1.0, classes,
                                {1: _match(5.0, 6.0, 7.0)}, junk)
    np.testing.assert_array_equal(out.has_prior, [True, False, False, False, False])
    columns = out.columns()
    np.testing.assert_allclose(columns["rlnAngleTiltPrior"], [6.0, NO_PRIOR, NO_PRIOR, NO_PRIOR, NO_PRIOR])
    np.testing.assert_allclose(columns["rlnAnglePsiPrior"], [17.0] + [NO_PRIOR] * 4)
    np.testing.assert_allclose(columns["rlnAnglePsi"], [17.0, 20.0, 30.0, 40.0, 50.0])  # the in-class psi kept
    np.testing.assert_allclose(columns["rlnCanonClassPsi"], [10.0, 20.0, 30.0, 40.0, 50.0])  # for alignments2D
    np.testing.assert_allclose(columns["rlnAngleRot"][1:], 0.0)
    assert out.origin_A is None  # nothing moved, nothing to write


# --- accuracy on a simulated set ----------------------------------------------------------------------------


def test_orientations_of_a_simulated_eight_view_set(ribosome, tmp_path):
    """8 views of the ribosome at SNR 0.05 with junk and 1.5 px shifts, each view a class aligned in its own
    frame (the classifier is tested elsewhere), the true map low-passed to 30 Å as the reference: every class is
    matched, and the particles' full orientations are within a few degrees of the truth."""
    n, box, apix = 400, 48, 6.0
    simulate_dataset(SimulationConfig(n_particles=n, box=box, pixel_size=apix, source=str(ribosome),
                                      map_pixel_size=RIBOSOME_APIX, views=8, snr=0.05, junk_fraction=0.1,
                                      shift_sigma=1.5 * apix, seed=1), tmp_path / "sim")
    data, _ = read_map(ribosome)
    with mrcfile.new(tmp_path / "ref.mrc") as m:
        m.set_data(lowpass_map(data.astype(np.float64), RIBOSOME_APIX / 30.0).astype(np.float32))
        m.voxel_size = RIBOSOME_APIX
    star, truth = read_star(tmp_path / "sim" / "particles.star"), read_ground_truth(tmp_path / "sim")
    junk = truth["rlnCanonIsJunk"].to_numpy().astype(bool)
    view = np.where(junk, 99, truth["rlnCanonViewId"].to_numpy() + 1)
    star.particles["rlnClassNumber"] = view
    # Each class starts in a frame of its own (a random turn per view) with 5° of noise per particle.
    rng = np.random.default_rng(0)
    start = truth["rlnAnglePsi"].to_numpy() + rng.uniform(-180, 180, 100)[view] + rng.normal(0, 5, n)
    refined = refine_classes(star, start, None, ctf_or_none(star), EstimateConfig(per_class=True), QUIET, Clock())
    reports = {k: {**v, "is_junk": k == "99"} for k, v in refined.class_reports.items()}
    found = orient_classes(tmp_path / "ref.mrc", None, "C1", refined.class_averages, reports, refined.classes,
                           refined.psi_deg, refined.origin_A, refined.box, refined.pixel_size_A, particle_junk=junk)
    p = found.particles
    error = orientation_distance_deg(
        euler_matrix(p.rot_deg, p.tilt_deg, p.psi_deg),
        euler_matrix(*(truth[c].to_numpy() for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))))
    good = ~junk
    assert not p.has_prior[junk].any()
    assert p.has_prior[good].mean() == 1.0 and found.report["n_classes_with_prior"] == 8
    assert found.report["classes"]["99"] == {"junk": True}
    assert np.median(error[good]) < 3.0
    assert np.mean(error[good] < 10.0) > 0.7  # the rest: particles the in-plane alignment got wrong at SNR 0.05
    for number, rows in refined.classes.items():
        if number != 99:
            match = found.report["classes"][str(number)]
            direction_error = direction_distance_deg(
                directions(match["rot_deg"], match["tilt_deg"]),
                directions(truth["rlnAngleRot"].to_numpy()[rows[0]], truth["rlnAngleTilt"].to_numpy()[rows[0]]))
            assert direction_error < 3.0, number
