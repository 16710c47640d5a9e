"""relion_canon.analysis.class_search: the global search finds a particle's turn and shift where a search that
takes the turn about the particle's (wrong) centre cannot."""

from __future__ import annotations

import math

import numpy as np
import torch

from relion_canon.analysis.alignment import AlignmentConfig, Poses, SearchGrid, ShiftSearch
from relion_canon.analysis.class_search import ClassSearch, averages_of
from relion_canon.geometry import rotate, wrap_rad


def _blob_image(box: int, seed: int) -> torch.Tensor:
    """An asymmetric image: a few Gaussian blobs of different sizes inside the mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:box, :box] - box // 2
    image = np.zeros((box, box))
    for _ in range(5):
        cx, cy = rng.uniform(-box / 5, box / 5, 2)
        image += rng.uniform(0.5, 1.5) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(1.0, 3.0) ** 2))
    return torch.from_numpy(image).float()


def _off_centre_set(seed: int, n: int = 24, box: int = 32):
    """Two references and ``n`` noisy particles of them, each turned and 4 px off-centre in every direction."""
    grid = SearchGrid.build(box, AlignmentConfig())
    references = torch.stack([_blob_image(box, 2 * seed + 1), _blob_image(box, 2 * seed + 2)])
    rng = np.random.default_rng(seed)
    psi = torch.from_numpy(rng.uniform(-math.pi, math.pi, n)).float()
    angle = torch.from_numpy(rng.uniform(0, 2 * math.pi, n)).float()
    shift = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    cls = torch.from_numpy(rng.integers(0, 2, n))
    noise = 0.05 * torch.randn(n, box, box, generator=torch.Generator().manual_seed(seed))
    particles = rotate(references[cls], psi, shift) + noise
    batches = [(np.arange(n), particles, particles, torch.ones(n, grid.n_rings))]
    return grid, references, psi, shift, cls, batches, ClassSearch(grid, torch.ones(grid.n_rings))


def test_global_search_finds_far_off_centre_particles():
    grid, references, psi, shift, cls, batches, search = _off_centre_set(0)
    n = len(psi)
    start = Poses(torch.zeros(n), torch.zeros(n, 2), torch.zeros(n))
    found, best = search.search_globally(batches, start, references, ShiftSearch(6.0, 3.0), grid.n_rings - 1,
                                         torch.ones(n, dtype=torch.bool))
    assert torch.equal(best, cls), (best, cls)
    # The coarse turns are 11.25° apart (the search that follows refines them): within one step; the
    # particles all start at the box centre, 4 px from their own.
    turn_error = torch.rad2deg(wrap_rad(found.psi_rad - psi)).abs()
    assert float(turn_error.max()) < 11.25, turn_error
    assert float((found.shift_px - shift).norm(dim=1).max()) < 1.0, found.shift_px - shift
    # Particles it is not asked about keep their poses.
    again, _ = search.search_globally(batches, start, references, ShiftSearch(6.0, 3.0), grid.n_rings - 1,
                                      torch.zeros(n, dtype=torch.bool))
    assert torch.equal(again.psi_rad, start.psi_rad) and torch.equal(again.shift_px, start.shift_px)


def test_centred_particles_are_found_where_a_search_about_the_box_centre_fails():
    """:meth:`ClassSearch.centred` before :meth:`ClassSearch.search`, as the pass over every particle does:
    particles 4 px off that start at the box centre get their turn and shift, which the search about the box
    centre alone misses for some of them."""
    from relion_canon.analysis.class_search import ClassState, sums_of

    grid, _, psi, shift, cls, batches, search = _off_centre_set(1)
    n = len(psi)
    # Class sums from the true poses (sharp references), but every particle starts at the box centre.
    sums = sums_of(batches, Poses(psi, shift, torch.zeros(n)), cls, 2, grid)
    start = ClassState(Poses(torch.zeros(n), torch.zeros(n, 2), torch.zeros(n)), cls.clone(), sums)
    shifts = ShiftSearch(6.0, 3.0)
    refs = torch.stack([a.reference for a in averages_of(sums, grid)])

    def errors(state: ClassState) -> tuple[torch.Tensor, torch.Tensor]:
        found = search.search(batches, state, refs, True, shifts, grid.n_rings - 1)
        return (torch.rad2deg(wrap_rad(found.poses.psi_rad - psi)).abs(),
                (found.poses.shift_px - shift).norm(dim=1))

    centred = search.centred(batches, start, shifts)
    assert torch.equal(centred.classes, start.classes) and centred.sums is start.sums
    turn, offset = errors(centred)
    # The turn is taken about the centre found (a few tenths of a px off): within a few degrees for these
    # small blobs, a few px from the centre; the search from the box centre misses by far more.
    assert float(turn.max()) < 6.0 and float(turn.median()) < 3.0 and float(offset.max()) < 0.5, (turn, offset)
    turn_alone, _ = errors(start)
    assert float(turn_alone.max()) > 10.0, turn_alone


def test_centred_keeps_a_pose_it_agrees_with_and_searches_only_the_classes_among():
    """A particle already at its pose in its class keeps it exactly (the global search's coarse turn is no
    better); the classes ``among`` are the only ones searched, as the junk classes are left out of the pass's
    centring, and a particle goes with the class its new pose was found against."""
    from relion_canon.analysis.class_search import ClassState, sums_of

    grid, _, psi, shift, cls, batches, search = _off_centre_set(2)
    n = len(psi)
    sums = sums_of(batches, Poses(psi, shift, torch.zeros(n)), cls, 2, grid)
    shifts = ShiftSearch(6.0, 3.0)
    # Off the coarse turns' grid by a few degrees, as a refined pose is.
    at_truth = ClassState(Poses(psi.clone(), shift.clone(), torch.ones(n)), cls.clone(), sums)
    kept = search.centred(batches, at_truth, shifts)
    assert torch.equal(kept.poses.psi_rad, psi) and torch.equal(kept.poses.shift_px, shift)

    start = ClassState(Poses(torch.zeros(n), torch.zeros(n, 2), torch.zeros(n)), cls.clone(), sums)
    only_second = search.centred(batches, start, shifts, torch.tensor([False, True]))
    turn = torch.rad2deg(wrap_rad(only_second.poses.psi_rad - psi)).abs()
    offset = (only_second.poses.shift_px - shift).norm(dim=1)
    second = cls == 1
    # Each particle goes with the class its pose was found against.
    assert bool((only_second.classes == 1).all()), only_second.classes
    assert float(turn[second].max()) < 11.25 and float(offset[second].max()) < 1.0, (turn, offset)
    # The first class's particles, matched against the other reference alone, land elsewhere.
    assert bool(((turn[~second] > 11.25) | (offset[~second] > 1.0)).any()), (turn, offset)


def test_better_of_keeps_each_particle_from_the_search_that_explains_it_better():
    """Two searches against the same references, one from the true centres and one from the box centre: each
    particle's log-likelihood is higher from its true centre wherever the poses differ, and ``better_of``
    takes, per particle, the class and pose of the higher one, with the sums those give."""
    from relion_canon.analysis.class_search import ClassState, better_of, sums_of

    grid, _, psi, shift, cls, batches, search = _off_centre_set(3)
    n = len(psi)
    sums = sums_of(batches, Poses(psi, shift, torch.zeros(n)), cls, 2, grid)
    refs = torch.stack([a.reference for a in averages_of(sums, grid)])
    shifts = ShiftSearch(6.0, 3.0)
    at_truth = search.search(batches, ClassState(Poses(psi, shift, torch.zeros(n)), cls.clone(), sums), refs, True,
                             shifts, grid.n_rings - 1)
    from_centre = search.search(batches, ClassState(Poses(torch.zeros(n), torch.zeros(n, 2), torch.zeros(n)),
                                                    cls.clone(), sums), refs, True, shifts, grid.n_rings - 1)
    assert at_truth.loglik is not None and bool(torch.isfinite(at_truth.loglik).all())
    off = torch.rad2deg(wrap_rad(from_centre.poses.psi_rad - psi)).abs() > 10.0
    assert bool(off.any()) and bool((at_truth.loglik[off] > from_centre.loglik[off]).all())

    best = better_of([from_centre, at_truth], batches, grid)
    take = at_truth.loglik > from_centre.loglik
    assert torch.equal(best.poses.psi_rad, torch.where(take, at_truth.poses.psi_rad, from_centre.poses.psi_rad))
    assert torch.equal(best.classes, torch.where(take, at_truth.classes, from_centre.classes))
    assert torch.equal(best.loglik, torch.maximum(at_truth.loglik, from_centre.loglik))
    again = sums_of(batches, best.poses, best.classes, 2, grid)
    assert torch.allclose(best.sums.num, again.num) and torch.allclose(best.sums.den, again.den)


def test_turned_away_finds_the_pose_half_a_turn_from_a_wrong_one():
    """A particle held half a turn off, about a wrong centre, is found at its true turn and centre among the
    turns a quarter turn or more from its current one, in its own class; a particle at its true pose gets a
    turn a quarter turn or more away from it."""
    from relion_canon.analysis.class_search import ClassState, sums_of

    grid, _, psi, shift, cls, batches, search = _off_centre_set(4)
    n = len(psi)
    sums = sums_of(batches, Poses(psi, shift, torch.zeros(n)), cls, 2, grid)
    shifts = ShiftSearch(6.0, 3.0)
    flipped = ClassState(Poses(wrap_rad(psi + math.pi), torch.zeros(n, 2), torch.zeros(n)), cls.clone(), sums)
    found = search.turned_away(batches, flipped, shifts)
    assert torch.equal(found.classes, cls) and found.sums is sums
    turn = torch.rad2deg(wrap_rad(found.poses.psi_rad - psi)).abs()
    assert float(turn.max()) < 11.25 and float((found.poses.shift_px - shift).norm(dim=1).max()) < 1.0, turn

    at_truth = ClassState(Poses(psi.clone(), shift.clone(), torch.zeros(n)), cls.clone(), sums)
    away = search.turned_away(batches, at_truth, shifts)
    assert float(torch.rad2deg(wrap_rad(away.poses.psi_rad - psi)).abs().min()) >= 90.0 - 11.25 / 2


def test_scored_in_place_is_the_search_score_at_the_pose_and_falls_off_it():
    """The score at a particle's own turn and centre is what a search from that pose, without a shift search,
    records at the best turn (the same correlation, the pose being the peak); the same particles scored at a
    centre 3 px off score lower."""
    from relion_canon.analysis.class_search import ClassState, sums_of

    grid, _, psi, shift, cls, batches, search = _off_centre_set(5)
    n = len(psi)
    sums = sums_of(batches, Poses(psi, shift, torch.zeros(n)), cls, 2, grid)
    refs = torch.stack([a.reference for a in averages_of(sums, grid)])
    at_truth = search.search(batches, ClassState(Poses(psi, shift, torch.zeros(n)), cls.clone(), sums), refs,
                             False, None, grid.n_rings - 1)
    state = ClassState(Poses(at_truth.poses.psi_rad, shift, torch.zeros(n)), cls.clone(), sums)
    scored = search.scored_in_place(batches, state)
    assert torch.allclose(scored.score, at_truth.poses.score, atol=1e-3), (scored.score, at_truth.poses.score)
    assert torch.equal(scored.psi_rad, state.poses.psi_rad) and torch.equal(scored.shift_px, shift)
    off = ClassState(Poses(at_truth.poses.psi_rad, shift + torch.tensor([3.0, 0.0]), torch.zeros(n)), cls.clone(),
                     sums)
    assert bool((search.scored_in_place(batches, off).score < scored.score - 0.05).all())
