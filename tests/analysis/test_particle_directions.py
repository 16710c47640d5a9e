"""Each particle's own direction about its class's (relion_canon.analysis.orientation.particle_directions): the
carried frame, and particles of one class seen from directions 10-20° apart get their own orientations back,
written so that the projection at their angles and origins remakes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relion_canon.analysis.alignment_reference import noise_spectrum
from relion_canon.analysis.orientation import ClassMatch, Matcher, particle_orientations
from relion_canon.analysis.orientation.directions import patch
from relion_canon.analysis.orientation.particle_directions import (DirectionSearch, particle_directions, spread_fitted,
                                                                    transported)
from relion_canon.analysis.orientation.point_group import orientation_distance_deg
from relion_canon.analysis.prepared_particles import prepare
from relion_canon.geometry import rotate_images, wrap_deg
from relion_canon.geometry.projection import euler_angles, euler_matrix
from relion_canon.simulate import load_source

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RIBOSOME = "maps/clean70SRibosome_vol_65p.mrc"


@pytest.fixture(scope="module")
def matcher(shared_data):
    return Matcher(load_source(shared_data / RIBOSOME, 32, 8.0, map_pixel_size=4.0).data, 8.0)


def white(particles: np.ndarray, matcher: Matcher) -> torch.Tensor:
    """A flat noise spectrum at the particles' mean power: these nearly noise-free particles' own spectrum would
    whiten their signal away."""
    power = noise_spectrum([particles], len(particles), matcher.grid.rings, matcher.grid.n_rings, over_processes=False)
    return torch.full_like(power, float(power.mean()))


def test_transport_reaches_each_direction_without_an_in_plane_turn_of_its_own():
    a = euler_matrix(60.0, 100.0, 25.0)
    points = patch(a[2], 5.0, 20.0)
    carried = transported(a, points)
    np.testing.assert_allclose(carried[:, 2], points, atol=1e-12)  # each looks along its direction
    np.testing.assert_allclose(carried[0], a, atol=1e-12)  # the centre stays put
    # The smallest rotation: the turn from the class's orientation is the angle between the directions.
    moved = np.rad2deg(np.arccos(np.clip(points @ a[2], -1, 1)))
    np.testing.assert_allclose(orientation_distance_deg(carried, np.repeat(a[None], len(points), 0)), moved, atol=1e-6)


def test_particles_of_a_class_spanning_directions_get_their_own(matcher):
    """A class whose particles look along directions 8-18° from the class's match (as a class of continuous
    orientations does): each particle, turned by ψ and moved by t in the class's frame as the 2-D alignment
    found it, gets back its own orientation, and the angles and origin written remake it."""
    alpha, s, pixel = 25.0, (0.5, -0.25), 8.0
    a_c = euler_matrix(60.0, 100.0, alpha)
    rng = np.random.default_rng(1)
    n = 24
    # True directions off the search grid: random headings, 8-18° away.
    u = np.cross(a_c[2], [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(a_c[2], u)
    heading, away = rng.uniform(0, 2 * np.pi, n), np.deg2rad(rng.uniform(8, 18, n))
    true_dirs = np.cos(away)[:, None] * a_c[2] + np.sin(away)[:, None] * (np.cos(heading)[:, None] * u +
                                                                          np.sin(heading)[:, None] * v)
    carried = np.stack([transported(a_c, d[None])[0] for d in true_dirs])
    in_class = np.stack([matcher.projector.project(*euler_angles(m), np.array([s]))[0] for m in carried])
    psi, t = rng.uniform(-180, 180, n), rng.normal(0, 1.0, (n, 2))
    particles = rotate_images(in_class, psi, order=3, shift_px=t).astype(np.float32)
    particles += rng.normal(0, 0.05 * particles.std(), particles.shape).astype(np.float32)
    match = ClassMatch(60.0, 100.0, alpha, s, 0.9, 0.5, 0.0, 0.0, np.ones(17), 10.0, False, "")
    idx = np.arange(n)
    noise = white(particles, matcher)
    prepared = [prepare(idx, particles, None, np.full(n, pixel), matcher.grid, noise)]
    search = DirectionSearch(radius_deg=25.0, step_deg=2.5, inplane_step_deg=3.0, inplane_steps=1)
    found = particle_directions(prepared, np.ones(n, dtype=np.int64), {1: match}, psi, t, matcher, noise, search)
    assert found.searched.all()
    out = particle_orientations(psi, -t * pixel, pixel, {1: idx}, {1: match}, directions=found)
    turn = euler_matrix(np.zeros(n), np.zeros(n), psi)  # Rz(ψ): the particle's in-class turn
    true = turn @ carried
    error = orientation_distance_deg(euler_matrix(out.rot_deg, out.tilt_deg, out.psi_deg), true)
    class_only = orientation_distance_deg(turn @ a_c, true)
    assert np.median(class_only) > 8.0
    assert np.median(error) < 2.5 and error.max() < 6.0, error
    spread = found.spread(1, idx, search)
    assert 7.0 < spread["particle_direction_median_deg"] < 19.0 and spread["particle_direction_at_edge"] == 0.0
    remade = matcher.projector.project(out.rot_deg, out.tilt_deg, out.psi_deg, -out.origin_A / pixel)
    for a, b in zip(particles, remade):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_a_class_of_one_direction_keeps_it(matcher):
    """Particles that all look along the class's direction stay there (no drift to neighbours)."""
    alpha, pixel, n = -40.0, 8.0, 16
    rng = np.random.default_rng(2)
    average = matcher.projector.project(-30.0, 60.0, alpha)[0]
    psi = rng.uniform(-180, 180, n)
    particles = rotate_images(np.repeat(average[None], n, 0), psi, order=3).astype(np.float32)
    particles += rng.normal(0, 0.05 * particles.std(), particles.shape).astype(np.float32)
    match = ClassMatch(-30.0, 60.0, alpha, (0.0, 0.0), 0.9, 0.5, 0.0, 0.0, np.ones(17), 10.0, False, "")
    noise = white(particles, matcher)
    prepared = [prepare(np.arange(n), particles, None, np.full(n, pixel), matcher.grid, noise)]
    found = particle_directions(prepared, np.ones(n, dtype=np.int64), {1: match}, psi, np.zeros((n, 2)), matcher,
                                noise)
    assert np.all(found.moved_deg == 0.0) and np.abs(found.inplane_deg).max() < 1.0
    np.testing.assert_allclose(found.psi_deg, wrap_deg(psi + alpha + found.inplane_deg), atol=1e-6)


def _peaked(spread_deg: float, width_deg: float, n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Log-likelihoods of n particles over a patch: Gaussian of ``width_deg`` about where noise put each one,
    width_deg from its true direction, itself ``spread_deg`` (σ) from the centre."""
    rng = np.random.default_rng(seed)
    points = patch(np.array([0.0, 0.0, 1.0]), 2.0, 40.0)
    plane = np.rad2deg(points[:, :2] / points[:, 2:])  # the tangent plane, degrees
    true = rng.normal(0, spread_deg, (n, 2))
    seen = true + rng.normal(0, width_deg, (n, 2))
    loglik = -((plane[None] - seen[:, None]) ** 2).sum(-1) / (2 * width_deg**2)
    return loglik, np.linalg.norm(plane, axis=1), plane, true


@pytest.mark.parametrize("spread_deg", [0.0, 10.0])
def test_the_fitted_spread_is_the_class_s_and_not_the_noise_s(spread_deg):
    """One view's particles, each seen 3° off by noise, fit a spread near 0 and stay at the centre; a class
    spanning σ = 10° fits about 10° and its particles go their own way."""
    loglik, moved, plane, true = _peaked(spread_deg, 3.0, 400, seed=3)
    sigma, which = spread_fitted(loglik, moved, floor_deg=0.5)
    if spread_deg == 0.0:
        assert sigma < 1.5 and np.mean(moved[which] == 0.0) > 0.9
        assert np.mean(loglik.argmax(axis=1) == 0) < 0.2  # without the prior they would wander
    else:
        assert 8.5 < sigma < 11.5
        # The particles land far nearer their true directions than the class's centre is.
        error = np.linalg.norm(plane[which] - true, axis=1)
        assert np.median(error) < np.median(np.linalg.norm(true, axis=1)) / 3
