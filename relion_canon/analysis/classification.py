"""Unsupervised 2-D classification: classes of one view each, every particle's class, angle and shift
against K references learnt from the particles (multi-reference refinement).

1. Initial classes: k-means on rotation-invariant, mirror-sensitive features
   (:mod:`relion_canon.analysis.class_features`), so that particles of one view start together whatever
   their angle.
2. A few rounds align each class to its own reference only, so every reference becomes a sharp image of
   its view before particles may move.
3. Then every round searches every particle against every reference (:mod:`~relion_canon.analysis.class_search`):
   every turn about its centre (one polar transform per particle, one product and inverse FFT per
   reference), and for its likeliest classes every shift within range under RELION's kind of offset prior,
   and moves it to the class whose reference explains it best: the Gaussian log-likelihood
   ⟨x, CR⟩/σ² − ½‖CR‖²/σ² at its best turn and shift, with the CTF C and noise σ² of the particle. Hard
   assignment: at the SNR of particles the winning class is usually clear once references are sharp, and a
   hard class is what RELION's Subset selection and the priors need. Searching shifts against more than the
   current class matters: a particle far off-centre is otherwise held by a blurred class it happens to fit.
4. Classes that are too small are dissolved, and two classes are merged (the smaller into the other) when
   their averages agree (after the best turn) as well as each class's own two half-sets agree, or when their
   particles prefer their own class over the other by only a few nats: one view. So the number of classes
   found follows the data, from the starting number down.
5. Stop when fewer than ``converged_fraction`` of the particles change class and the angles of the others,
   but for as many again that changed most, move less than ``converged_deg`` (rms); the report says when
   the rounds ran out first.
6. Then each class is tested for more than one view by its particles' residuals
   (:mod:`~relion_canon.analysis.class_split`): k-means on invariants can start two views in one class, and
   the refinement cannot part them, since each of their particles fits the blend better than any other
   class. Classes that fail the test are split in two and the rounds go on, up to ``split_passes`` times;
   the two parts merge again (step 4) only when, together, they pass the test. Junk classes (by the rule of
   step 8) are not tested: they are no view to part.
7. Sets larger than the rounds' subset meet the references in a pass over all particles. Three last passes
   follow, against the same references and under one offset prior: from the poses before; from every
   particle's centre searched anew against the classes that are not junk (every coarse turn and shift:
   :meth:`~relion_canon.analysis.class_search.ClassSearch.centred`), as a turn found about a wrong centre
   is not mended by a shift at that turn; and from the best coarse pose a quarter turn or more away
   (:meth:`~relion_canon.analysis.class_search.ClassSearch.turned_away`: views alike at half a turn). Each
   particle keeps the likeliest (:func:`~relion_canon.analysis.class_search.better_of`), scored there.
8. Given a rule for junk classes, their particles get a second chance against the good classes alone (see
   :func:`~relion_canon.analysis.class_rehome.rehome`).

References are the CTF-corrected, Wiener-filtered class averages of :mod:`relion_canon.analysis.alignment`,
with the same half-set FRC; each class's angles are in its own average's frame, as RELION's Class2D gives.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from relion_canon.analysis.alignment import AlignmentConfig, Poses, SearchGrid, ShiftSearch
from relion_canon.analysis.class_comparison import half_agreement, merge_candidates
from relion_canon.analysis.class_features import initial_classes, invariant_features
from relion_canon.analysis.class_rehome import ApartRule, JunkRule, junk_classes_now, rehome
from relion_canon.analysis.class_result import Classification
from relion_canon.analysis.class_split import Splitter
from relion_canon.analysis.class_search import (ClassSearch, ClassState, averages_of, better_of, sums_of,
                                                supported_band)
from relion_canon.analysis.prepared_particles import ImageBatches, Prepared, PreparedParticles
from relion_canon.context import QUIET, RunContext
from relion_canon.ctf import CtfParams
from relion_canon.geometry import resolution_at_threshold_A, wrap_deg, wrap_rad

log = logging.getLogger(__name__)

MERGE_WHEN_MOVED = 0.02  # merging waits until fewer than this fraction of the particles change class
# Rounds after a split in which no classes merge: the two parts start from averages made at the poses
# the mixed class gave, blurred, and would merge back on them before their particles are aligned anew.
HOLD_MERGES_AFTER_SPLIT = 3
# Rounds after a split before the classes may count as settled: two more, in which a false split can merge.
SETTLE_AFTER_SPLIT = HOLD_MERGES_AFTER_SPLIT + 2

@dataclass
class ClassificationConfig:
    n_classes: int | None = None  # classes to start from; None: one per ``particles_per_class`` particles
    # Also the rounds' random subset per starting class (at least ``reference_particles``); twice as many made
    # them twice as slow without purer classes (benchmarks/classify/README.md, "Speed on 2 cores").
    particles_per_class: int = 100
    max_classes: int = 50
    rounds: int = 30  # at most, fixed rounds included
    fixed_rounds: int = 3  # rounds that align each class to its own reference before particles may move
    min_rounds: int = 6
    converged_fraction: float = 0.005  # of the particles changing class in a round
    converged_deg: float = 0.5  # rms psi change of the particles that kept their class (see _settled_rms)
    # of the starting classes' mean size: smaller classes are dissolved. Fixed at the start, so that a class
    # of junk (a tenth of the particles, say) survives once the views' classes have merged into a few.
    min_class_fraction: float = 0.25
    # Times the settled classes are tested for more than one view and split (class_split), with at most
    # ``rounds_after_split`` rounds after each.
    split_passes: int = 3
    rounds_after_split: int = 10
    alignment: AlignmentConfig = field(default_factory=lambda: AlignmentConfig(max_shift=5.0))
    seed: int = 0


def default_n_classes(n_particles: int, config: ClassificationConfig) -> int:
    """Enough classes that each holds ``particles_per_class`` particles, within [1, ``max_classes``]."""
    if config.n_classes is not None:
        return max(1, min(config.n_classes, n_particles // 2))
    return int(np.clip(round(n_particles / config.particles_per_class), 1, config.max_classes))


def classify_particles(
    batches: ImageBatches,
    n_particles: int,
    ctf: CtfParams | None,
    pixel_size: np.ndarray,
    box: int,
    initial_psi_deg: np.ndarray | None = None,
    config: ClassificationConfig = ClassificationConfig(),
    *,
    junk_rule: JunkRule | None = None,
    apart_rule: ApartRule | None = None,
    context: RunContext = QUIET,
) -> Classification:
    """Classify and align the particles ``batches`` yields (as :func:`~relion_canon.analysis.alignment.align_particles`
    takes them) into classes of one view each; see the module docstring."""
    al = config.alignment
    rng = np.random.default_rng(config.seed)
    poses = Poses.start(initial_psi_deg, n_particles, rng)
    k = default_n_classes(n_particles, config)
    per_class = config.particles_per_class * k
    reference_particles = None if al.reference_particles is None else max(al.reference_particles, per_class)
    subset = None
    if reference_particles is not None and n_particles > reference_particles:
        subset = np.sort(rng.choice(n_particles, reference_particles, replace=False))
    pixel_size_A = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (n_particles,))
    grid = SearchGrid.build(box, al)
    particles = PreparedParticles(batches, n_particles, ctf, pixel_size_A, grid, subset, al.cache_bytes)
    rows = particles.rows
    features = invariant_features(particles.for_rounds(), rows, grid)
    classes = np.zeros(n_particles, dtype=np.int64)
    classes[rows] = initial_classes(features, k, config.seed)
    log.info("classification: %d particles, %d starting classes (rotation-invariant features, k-means)",
             len(rows), k)
    state = ClassState(poses, torch.from_numpy(classes), sums_of(particles.for_rounds(), poses,
                                                                torch.from_numpy(classes), k, grid))
    rounds = _Rounds(particles, grid, config, float(np.median(pixel_size_A)), k, context, junk_rule)
    state, converged = rounds.run(state, rows)
    state = rounds.last_passes(state, n_particles, subset is not None)
    if junk_rule is not None:
        defocus_A = None if ctf is None else 0.5 * (ctf.defocus_u + ctf.defocus_v)
        state = rehome(state, particles, junk_rule, rounds.searcher, rounds.shifts, grid, rounds.pixel_size_A,
                       apart_rule, defocus_A)
    return rounds.result(state, particles.noise, converged)


def _settled_rms(change_deg: torch.Tensor, spared: int) -> float:
    """The rms of the psi changes ``change_deg`` without the ``spared`` largest (as many as may change class):
    a few noisy particles whose best turn flips between rounds would otherwise keep it above ``converged_deg``
    for good, and the rounds run on while nothing else moves."""
    kept = torch.sort(change_deg.abs()).values[: max(len(change_deg) - spared, 0)]
    return float(torch.sqrt((kept.double() ** 2).mean())) if len(kept) else 0.0


class _Rounds:
    """The rounds of the multi-reference refinement over one set of prepared particles."""

    def __init__(self, particles: PreparedParticles, grid: SearchGrid, config: ClassificationConfig,
                 pixel_size_A: float, starting_classes: int, context: RunContext, junk_rule: JunkRule | None = None):
        self.particles, self.grid, self.config, self.context = particles, grid, config, context
        self.junk_rule = junk_rule
        self.pixel_size_A = pixel_size_A
        self.history: list[dict[str, float]] = []
        self.starting_classes = starting_classes
        self.shifts = ShiftSearch.start(config.alignment.max_shift)
        self.searcher = ClassSearch(grid, particles.noise)
        self.merges_from = config.fixed_rounds + 2  # the first round (of self.history) that may merge classes
        self.split_pairs: set[frozenset[int]] = set()  # the two parts of each split class, by class index
        self.splitter = Splitter(particles, grid, config.seed)
        self.splits: list[dict] = []

    def run(self, state: ClassState, rows: np.ndarray) -> tuple[ClassState, bool]:
        """Rounds until the classes settle; then classes that hold more than one view are split
        (:mod:`~relion_canon.analysis.class_split`) and the rounds go on, up to ``split_passes`` times."""
        config = self.config
        state, converged = self._rounds(state, rows, config.rounds, config.min_rounds)
        for _ in range(config.split_passes):
            split = self._split(state, rows)
            if split is None:
                break
            state, converged = self._rounds(split, rows, config.rounds_after_split, SETTLE_AFTER_SPLIT)
        if converged:
            return state, True
        # A last search without dissolving or merging, so that no particle keeps a pose from a class that
        # the last round removed.
        state, moved, rms, _ = self.one(state, self.particles.for_rounds(), rows, True, "final round", tidy=False)
        log.warning("classification: stopped after %d rounds without converging (%.1f %% of the particles "
                    "changed class in the final round, psi changed by %.2f° rms without the most changed)",
                    len(self.history), 100 * moved, rms)
        return state, False

    def _rounds(self, state: ClassState, rows: np.ndarray, rounds: int, min_rounds: int) -> tuple[ClassState, bool]:
        """Up to ``rounds`` rounds, the first ``fixed_rounds`` of a classification holding the classes; whether
        they converged (after at least ``min_rounds``)."""
        config = self.config
        for round_ in range(rounds):
            reassign = len(self.history) >= config.fixed_rounds
            title = f"round {len(self.history) + 1}" + ("" if reassign else " (classes held)")
            state, moved, rms, dropped = self.one(state, self.particles.for_rounds(), rows, reassign, title)
            if (reassign and round_ + 1 >= min_rounds and not dropped
                    and moved < config.converged_fraction and rms < config.converged_deg):
                return state, True
        return state, False

    def _split(self, state: ClassState, rows: np.ndarray) -> ClassState | None:
        """``state`` with every class whose particles show more than one view split in two
        (:class:`~relion_canon.analysis.class_split.Splitter`), or None when none does."""
        config, k = self.config, state.sums.n_classes
        smallest = config.min_class_fraction * len(rows) / self.starting_classes
        # A junk class is no view to part: its particles are unlike one another by nature, and the parts of a
        # split junk class, each smaller, are judged anew by the junk rule, so some of its junk would pass.
        found = self.splitter.split(state, rows, smallest, config.max_classes - k, self.junk(state, rows))
        if found is None:
            return None
        classes, splits = found
        self.split_pairs |= {frozenset((c, new)) for new, (c, _) in enumerate(splits, start=k)}
        log.info("classification: %d class(es) hold more than one view (their residuals' leading variance "
                 "%s× noise's) and are split in two; %d classes", len(splits),
                 ", ".join(f"{t.ratio:.1f}" for _, t in splits), k + len(splits))
        self.merges_from = len(self.history) + HOLD_MERGES_AFTER_SPLIT
        self.splits.append({"after_round": len(self.history), "n_split": len(splits),
                            "residual_ratios": [round(t.ratio, 3) for _, t in splits]})
        poses = state.poses
        if self.shifts.max_px > 0:
            # Particles far off-centre, their turn found about a wrong centre, leave a residual of their own and
            # can be split off as a part. A search that does not depend on the centre places them anew against
            # every class, so that such a part empties (and is dissolved) instead of staying a class of them.
            parts = averages_of(sums_of(self.particles.for_rounds(), poses, classes, k + len(splits), self.grid),
                                self.grid)
            split = torch.zeros(len(classes), dtype=torch.bool)
            for _, t in splits:
                split[torch.from_numpy(t.members)] = True
            poses = self.searcher.search_globally(self.particles.for_rounds(), poses,
                                                  torch.stack([a.reference for a in parts]), self.shifts,
                                                  supported_band(parts), split)[0]
        sums = sums_of(self.particles.for_rounds(), poses, classes, k + len(splits), self.grid)
        return ClassState(poses.copy(), classes, sums)

    def last_passes(self, state: ClassState, n_particles: int, on_subset: bool) -> ClassState:
        """After the rounds (``on_subset``: on a subset of the ``n_particles``), the passes over every particle of
        step 7 of the module docstring."""
        particles, everyone = self.particles, np.arange(n_particles)
        if on_subset:
            particles.drop_subset()
            state = self.one(state, particles.everyone(), everyone, True, "pass over all particles", tidy=False)[0]
        prior = self.shifts

        def pass_from(start: ClassState, title: str, reassign: bool = True) -> ClassState:
            self.shifts = prior  # one offset prior for every last pass: their log-likelihoods are compared
            return self.one(start, particles.everyone(), everyone, reassign, title, tidy=False)[0]

        if prior.max_px == 0:
            return pass_from(state, "last pass over all particles") if on_subset else state
        last = pass_from(state, "last pass over all particles")
        # Not against junk classes: a good particle fits their blurred averages about as well at any centre. A
        # pass from a coarse pose refines less than the rounds did: the best is kept (benchmarks/classify).
        good = None if self.junk_rule is None else torch.from_numpy(~self.junk(state, everyone))
        found = pass_from(self.searcher.centred(particles.everyone(), state, prior, None if good is None or not
                                                good.any() else good), "last pass from the centres found")
        turned = ClassState(last.poses, last.classes, state.sums)  # against the references the others searched
        away = pass_from(self.searcher.turned_away(particles.everyone(), turned, prior),  # in its own class: cheaper
                         "last pass from the other half of the turns", reassign=False)
        best = better_of([last, found, away], particles.everyone(), self.grid)
        best.poses = self.searcher.scored_in_place(particles.everyone(), best)
        self.shifts = prior.updated(best.poses.shift_px)  # the re-homing's prior: from the poses kept
        log.info("classification: %d of %d particles are explained better from the centres found, %d from the other "
                 "half of the turns", found.loglik.gt(last.loglik).sum(), n_particles,
                 best.loglik.gt(torch.maximum(last.loglik, found.loglik)).sum())
        return best

    def junk(self, state: ClassState, rows: np.ndarray) -> np.ndarray | None:
        """(K,) bool: the classes the junk rule calls junk now, judged on ``rows``; None without a rule."""
        return (None if self.junk_rule is None else junk_classes_now(
            state, averages_of(state.sums, self.grid), self.junk_rule, self.pixel_size_A, self.grid.box, rows))

    def one(self, state: ClassState, batches: Iterable[Prepared], rows: np.ndarray, reassign: bool,
            title: str, tidy: bool = True) -> tuple[ClassState, float, float, bool]:
        """One search of ``rows`` against the references of ``state``; then dissolve and merge classes. The
        new state, the fraction of particles that changed class, the rms psi change of those that kept it
        (without the few that changed most: :func:`_settled_rms`), and whether a class was dropped."""
        self.context.check_stop("classification")
        averages = averages_of(state.sums, self.grid)
        references = torch.stack([a.reference for a in averages])
        band = supported_band(averages)
        round_number = len(self.history)
        shifts = self.shifts if round_number >= self.config.alignment.shift_from_round else None
        new = self.searcher.search(batches, state, references, reassign, shifts, band)
        if shifts is not None:
            self.shifts = shifts.updated(new.poses.shift_px[torch.from_numpy(rows)])
        t = torch.from_numpy(rows)
        kept = new.classes[t] == state.classes[t]
        moved = float((~kept).double().mean())
        change = torch.rad2deg(wrap_rad(new.poses.psi_rad[t][kept] - state.poses.psi_rad[t][kept]))
        rms = float(torch.sqrt((change**2).mean())) if len(change) else 0.0
        settled = _settled_rms(change, int(self.config.converged_fraction * len(rows)))
        new, dropped = self._tidy(new, rows, moved) if reassign and tidy else (new, False)
        self._record(title, new, rows, moved, rms, settled)
        return new, moved, settled, dropped

    def _tidy(self, state: ClassState, rows: np.ndarray, moved: float) -> tuple[ClassState, bool]:
        """Dissolve classes smaller than ``min_class_fraction`` of the starting mean, and merge classes that show
        one view; the surviving classes renumbered in order. Their particles keep their poses and find
        their new class at the next search."""
        k = state.sums.n_classes
        counts = torch.bincount(state.classes[torch.from_numpy(rows)], minlength=k).double()
        keep = counts >= self.config.min_class_fraction * counts.sum() / self.starting_classes
        # Merging waits until the assignment has settled (references sharp, few particles moving), and then
        # merges the most alike pairs first, a few at a time, so that no merge is judged on blurred averages.
        merging = len(self.history) >= self.merges_from and moved < MERGE_WHEN_MOVED
        merged_into = self._duplicates(state, counts, keep, self._nats(state.margins)) if merging else {}
        for small in merged_into:
            keep[small] = False
        if bool(keep.all()):
            return state, False
        poses = state.poses.copy()
        for small, (large, turn) in merged_into.items():
            # The merged class's particles are turned into the frame of the class they join, so that its
            # average is not a blend of two frames: the small average turned by ``turn`` is the large one.
            members = state.classes == small
            poses.psi_rad[members] = wrap_rad(poses.psi_rad[members] - turn)
        survivors = torch.nonzero(keep).flatten()
        new_index = torch.full((k,), -1, dtype=torch.long)
        new_index[survivors] = torch.arange(len(survivors))
        for small, (large, _) in merged_into.items():
            new_index[small] = new_index[large]
        classes = new_index[state.classes]
        # The split pairs renumbered; a pair that lost a class, or merged, is no longer one.
        renumbered = (frozenset(int(new_index[c]) for c in pair) for pair in self.split_pairs)
        self.split_pairs = {pair for pair in renumbered if len(pair) == 2 and min(pair) >= 0}
        # A dissolved class's particles go, for now, to the largest class; the next search places them.
        classes[classes < 0] = int(new_index[survivors[counts[survivors].argmax()]])
        log.info("classification: %d classes dissolved (too few particles), %d merged (same view); %d left",
                 int((~keep).sum()) - len(merged_into), len(merged_into), len(survivors))
        sums = sums_of(self.particles.for_rounds(), poses, classes, len(survivors), self.grid)
        return ClassState(poses, classes, sums), True

    def _nats(self, margins: torch.Tensor | None) -> torch.Tensor:
        """Log-likelihoods as the search sums them, in nats: the noise spectrum is in rfft2 units (B²σ² for
        white noise of variance σ² per pixel), so those sums are the log-likelihood over B²."""
        k = self.grid.box
        return margins * k * k if margins is not None else torch.full((1, 1), math.inf)

    def _duplicates(self, state: ClassState, counts: torch.Tensor, keep: torch.Tensor,
                    margins: torch.Tensor) -> dict[int, tuple[int, float]]:
        """Smaller class → larger class (and the turn between them) for pairs that show one view
        (:func:`~relion_canon.analysis.class_comparison.merge_candidates`), the most alike first, a third of
        the classes at most. The two parts of a split class merge only when together they pass the one-view
        test (:meth:`Splitter.still_two_views`)."""
        averages = averages_of(state.sums, self.grid)
        turn, candidates = merge_candidates(averages, counts, keep, margins, self.searcher.likelihood_weight(),
                                            self.grid)
        merged: dict[int, tuple[int, float]] = {}
        for _, small, large in sorted(candidates):
            if len(merged) >= max(1, len(averages) // 3):
                break
            if small not in merged and large not in merged and all(small != into for into, _ in merged.values()):
                # Two parts of a split class differ in their particles' residuals; their averages, from few
                # particles at low SNR, can still look alike: they merge only when the merged class passes
                # the one-view test.
                if frozenset((small, large)) in self.split_pairs and self.splitter.still_two_views(
                        state, small, large, float(turn[large, small])):
                    continue
                merged[small] = (large, float(turn[large, small]))
        return merged

    def _record(self, title: str, state: ClassState, rows: np.ndarray, moved: float, rms: float,
                settled: float) -> None:
        t = torch.from_numpy(rows)
        entry = {"round": len(self.history) + 1, "n_classes": state.sums.n_classes, "moved_fraction": moved,
                 "psi_change_rms_deg": rms, "psi_change_settled_rms_deg": settled,
                 "mean_score": float(state.poses.score[t].mean())}
        self.history.append(entry)
        log.info("classification %s: %d classes, %.1f %% of the particles changed class, psi changed by %.2f° "
                 "rms (%.2f° without the %.1f %% that changed most), mean correlation %.3f", title,
                 entry["n_classes"], 100 * moved, rms, settled, 100 * self.config.converged_fraction,
                 entry["mean_score"])

    def result(self, state: ClassState, noise: torch.Tensor, converged: bool) -> Classification:
        """The final classes, sorted by population (largest first), with their references and resolutions."""
        averages = averages_of(state.sums, self.grid)
        references = torch.stack([a.reference for a in averages])
        halves = torch.stack([a.halves for a in averages])
        frc = np.stack([a.frc for a in averages])
        counts = torch.bincount(state.classes, minlength=len(references))
        # Largest first; a class that re-homing emptied is dropped.
        order = torch.argsort(counts, descending=True, stable=True)[: int((counts > 0).sum())]
        rank = torch.full((len(counts),), -1, dtype=torch.long)
        rank[order] = torch.arange(len(order))
        resolution = np.array([resolution_at_threshold_A(f, self.pixel_size_A, self.grid.box) for f in frc[order.numpy()]])
        psi = wrap_deg(np.rad2deg(state.poses.psi_rad.numpy().astype(np.float64)))
        return Classification(
            class_index=rank[state.classes].numpy().astype(np.int64), psi_deg=psi,
            shift_px=state.poses.shift_px.numpy().astype(np.float64),
            score=state.poses.score.numpy().astype(np.float64), references=references[order].numpy(),
            frc=frc[order.numpy()], half_agreement=half_agreement(halves)[order].numpy(), resolution_A=resolution,
            noise=noise.numpy(), converged=converged, history=self.history, splits=self.splits)
