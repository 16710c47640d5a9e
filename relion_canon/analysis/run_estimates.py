"""From a trained model and particles to every per-particle estimate the job writes (the analysis stage).

The new STAR columns (:data:`COLUMNS`):

* ``rlnAnglePsi`` / ``rlnAnglePsiPrior``: in-plane angle, degrees in [−180, 180), RELION's convention;
* ``rlnCanonDefocus``: estimated mean defocus in Å (the input's ``rlnDefocusU/V`` are never touched): the
  fit of the particle's CTF to the aligned canonical reference when the job refines, else paper B's;
* ``rlnCanonDefocusLatent``: paper B's estimate (latent polar radius mapped onto the known defocus
  distribution by quantiles, eq. 7), for comparison;
* ``rlnParticleFigureOfMerit``: weight w = exp(def̂ in µm) − 1, as ``relion_reconstruct --fom_weighting`` reads;
* ``rlnParticleSelectZScore``: standardised outlier score, high = likely junk;
* ``rlnCanonIsOutlier``: 1 where the score is above the threshold, else 0;
* ``rlnCanonAlignmentScore``: with refinement, the particle's correlation with the CTF-modulated reference;
* ``rlnCanonCanonicalImage``: with ``write_canonical``, the particle's canonical (unrotated, denoised) image:
  with refinement its class's reference in ``class_averages.mrcs``, else the network's output written to
  ``canonical.mrcs``.

With refinement, ``class_averages.mrcs`` holds the canonical average of each class (one image when not
per class).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from relion_canon.analysis.alignment import AlignmentConfig, align_particles
from relion_canon.analysis.ctf_fit import fit_defocus
from relion_canon.analysis.defocus import defocus_from_radius, weight_from_defocus
from relion_canon.analysis.estimates import psi_degrees
from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.metrics import align_angles, wrap_degrees
from relion_canon.analysis.outliers import flag_outliers, outlier_scores
from relion_canon.analysis.symmetry import detect_symmetry
from relion_canon.context import QUIET, RunContext
from relion_canon.ctf import CtfParams
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import stack_writer, write_stack
from relion_canon.io.star import ParticleStar
from relion_canon.preprocess import PreprocessConfig
from relion_canon.preprocess.fourier import fourier_resample
from relion_canon.train.data import ParticleBatches

if TYPE_CHECKING:
    from relion_canon.pipeline import JobConfig

COLUMNS = (
    "rlnAnglePsi",
    "rlnAnglePsiPrior",
    "rlnCanonDefocus",
    "rlnCanonDefocusLatent",
    "rlnParticleFigureOfMerit",
    "rlnParticleSelectZScore",
    "rlnCanonIsOutlier",
    "rlnCanonAlignmentScore",
    "rlnCanonCanonicalImage",
)


@dataclass
class Estimates:
    """Everything the analysis stage found, for the STAR writer, the report and the figures."""

    columns: dict[str, np.ndarray]  # the new STAR columns above, in STAR order
    report: dict[str, Any]  # JSON-able facts: outlier method and threshold, symmetry, defocus mapping, frames
    latent: np.ndarray  # (N, L) model latent (means), in STAR order
    psi_model: np.ndarray  # (N,) degrees: the network's own angle, before any refinement
    defocus_input: np.ndarray | None  # (N,) Å: mean of the STAR's rlnDefocusU/V, where it has them
    outlier_scores: dict[str, np.ndarray]  # detector name → (N,) standardised score (high = junk)
    example_index: np.ndarray  # (K,) rows shown in the image grids
    example_inputs: np.ndarray  # (K, H, W) preprocessed inputs of those rows
    example_canonical: np.ndarray  # (K, H, W) their canonical (unrotated, denoised) images (see the column)
    class_averages: dict[int, np.ndarray] = field(default_factory=dict)  # class number (0: all) → (H, W) canonical average


N_EXAMPLES = 16  # particles shown in the image grids
CANONICAL_STACK = "canonical.mrcs"
CLASS_AVERAGES = "class_averages.mrcs"
# Short names users type (RELION GUI, CLI) → the detectors' names in analysis.outliers.
OUTLIER_METHODS = {"iforest": "isolation_forest", "covariance": "robust_covariance"}


def estimate(
    star: ParticleStar,
    model_path: str | Path,
    out_dir: str | Path,
    config: "JobConfig",
    log: Callable[[str], None] = print,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    project_dir: str | Path | None = None,
) -> Estimates:
    """Apply the trained model to every particle and derive the job's estimates (see the module docstring)."""
    from relion_canon.train.engine import resolve_device
    from relion_canon.train.inference import dataset_for, load_model, run_inference

    device = resolve_device(config.device)
    loaded = load_model(model_path, device)
    dataset = dataset_for(loaded, star, project_dir)
    n = len(dataset)
    log(f"Predicting {n} particles with {loaded.meta['model']} ({dataset.box} px)")
    clock = _Clock()
    outputs = run_inference(loaded, dataset, batch_size=256, progress=progress, should_stop=should_stop)
    clock.lap("predict")
    psi_model = psi_degrees(outputs)
    latent = outputs["latent"]
    rng = np.random.default_rng(config.seed)
    example_index = np.sort(rng.choice(n, size=min(N_EXAMPLES, n), replace=False))
    example = dataset[example_index]
    canon = loaded.model.predict(example["image"].to(device), canonical=True,
                                 ctf=example["ctf"].to(device) if "ctf" in example else None)
    report: dict[str, Any] = {"model": loaded.meta["model"], "seconds": clock.seconds}

    # Refinement works on the particles at the working box (the network may have seen them smaller), neither
    # phase-flipped nor masked: it multiplies each particle by its own CTF itself.
    images = ParticleBatches(star, PreprocessConfig(box=config.box), source=dataset.source)
    ctf = _ctf_or_none(star)
    classes = _class_groups(star, config.per_class)
    psi = psi_model.copy()
    score = np.full(n, np.nan)
    defocus_fit = np.full(n, np.nan)
    fit_peak = np.full(n, np.nan)
    class_averages: dict[int, np.ndarray] = {}
    report["classes"] = {}
    for number, rows in classes.items():
        info: dict[str, Any] = {"n_particles": int(len(rows))}
        if config.refine:
            log(f"Refining in-plane angles against the learnt canonical image"
                f"{'' if number == 0 else f' of class {number}'} ({len(rows)} particles)")
            batches = _batches(images, rows)
            clock.lap()
            alignment = align_particles(
                batches, len(rows), None if ctf is None else ctf.take(rows), images.pixel_size[rows], images.box,
                psi_model[rows], AlignmentConfig(max_shift=config.max_shift_px, seed=config.seed),
                context=QUIET if should_stop is None else RunContext(should_stop=should_stop),
            )
            psi[rows], score[rows] = alignment.psi, alignment.score
            clock.lap("refine")
            class_averages[number] = alignment.reference
            info["alignment"] = alignment.history
            if ctf is not None:
                defocus_fit[rows], fit_peak[rows] = fit_defocus(batches, alignment, ctf.take(rows),
                                                                images.pixel_size[rows], images.box)
                clock.lap("defocus_fit")
            symmetry = detect_symmetry(alignment.reference, radius=int(0.9 * images.box / 2))
            info["symmetry"] = symmetry.report()
            if symmetry.n > 1:
                log(f"Class {number}: the canonical image looks C{symmetry.n}-symmetric (confidence "
                    f"{symmetry.confidence:.2f}): psi is determined only modulo {360 / symmetry.n:g}°")
        if config.per_class and number != 0 and "rlnAnglePsi" in star.particles.columns:
            # Express the class's angles in RELION's own frame for that class, so the priors agree with it.
            given = star.particles["rlnAnglePsi"].to_numpy(np.float64)[rows]
            # Fitted on the particles that match the reference best: junk has arbitrary angles in both frames
            # and would pull a least-squares offset by degrees.
            good = score[rows] >= np.median(score[rows]) if config.refine else np.ones(len(rows), bool)
            fit = align_angles(psi[rows][good], given[good])
            psi[rows] = wrap_degrees(fit.sign * psi[rows] - fit.offset)
            info["frame"] = {"offset_deg": fit.offset, "sign": fit.sign, "rmse_vs_input_deg": fit.rmse}
        report["classes"][str(number)] = info
    main = report["classes"][str(next(iter(classes)))]
    report["symmetry"] = main.get("symmetry", {"n": 1, "confidence": 0.0})

    # Defocus: paper B's latent radius mapped onto the known distribution, and the fit to the reference.
    defocus_input = None if ctf is None else 0.5 * (ctf.defocus_u + ctf.defocus_v)
    defocus_columns: dict[str, np.ndarray] = {}
    if defocus_input is None and config.defocus_range is None:
        # No CTF in the STAR and no range given (e.g. negative stain, or images without CTF): nothing to map
        # the latent onto, so no defocus, and no weight derived from it.
        report["defocus"] = {"method": None, "reason": "the particles have no CTF parameters and no range was given"}
        log("No defocus estimate: the particles have no rlnDefocusU/V and no defocus range was given")
    else:
        _, radius = polar_readout(latent)
        defocus_latent = defocus_from_radius(radius, reference_defocus=defocus_input,
                                             defocus_range=config.defocus_range)
        use_fit = bool(np.all(np.isfinite(defocus_fit)))
        defocus = defocus_fit if use_fit else defocus_latent
        report["defocus"] = {"method": "ctf_fit_to_reference" if use_fit else "latent_radius_quantiles"}
        defocus_columns = {"rlnCanonDefocus": defocus, "rlnCanonDefocusLatent": defocus_latent,
                           "rlnParticleFigureOfMerit": weight_from_defocus(defocus)}

    # Outliers: the detectors run on what separates junk from particles. With refinement that is, first, how
    # well the particle matches the CTF-modulated reference (correlation at the best angle and at the best
    # defocus, and how far that defocus is from the STAR's), with the latent's two principal components;
    # without it, the model's latent alone.
    features = _outlier_features(latent, score, fit_peak, defocus_fit, defocus_input)
    method = OUTLIER_METHODS.get(config.outlier_method, config.outlier_method)
    clock.lap()
    result = outlier_scores(features, method=method, seed=config.seed)
    clock.lap("outliers")
    z = result.z
    flag = flag_outliers(z, config.outlier_threshold)
    report["outliers"] = {**result.report(), "threshold": config.outlier_threshold, "n_flagged": int(flag.sum())}
    log(f"Outliers ({config.outlier_method}): {int(flag.sum())} of {n} particles above Z = {config.outlier_threshold:g}")

    columns = {
        "rlnAnglePsi": psi,
        "rlnAnglePsiPrior": psi,
        **defocus_columns,
        "rlnParticleSelectZScore": z,
        "rlnCanonIsOutlier": flag.astype(np.int64),
    }
    if config.refine:
        columns["rlnCanonAlignmentScore"] = score
    pixel = float(np.median(images.pixel_size))
    out_dir = Path(out_dir)
    example_canonical = canon["canonical"].float().cpu().numpy()
    if class_averages:
        # With refinement the canonical image of a particle is its class's reference: the CTF-corrected,
        # Wiener-filtered average of the particles turned back, far less noisy than one network output.
        numbers = sorted(class_averages)
        path = write_stack(out_dir / CLASS_AVERAGES, np.stack([class_averages[c] for c in numbers]), pixel)
        report["class_averages"] = {"file": str(path), "classes": numbers}
        position = np.empty(n, dtype=np.int64)
        for k, number in enumerate(numbers):
            position[classes[number]] = k
        example_canonical = np.stack([class_averages[numbers[k]] for k in position[example_index]])
        if config.write_canonical:
            columns["rlnCanonCanonicalImage"] = np.array([format_image_name(k, str(path)) for k in position],
                                                         dtype=object)
    elif config.write_canonical:
        columns["rlnCanonCanonicalImage"] = _write_canonical(loaded, dataset, out_dir / CANONICAL_STACK, images.box,
                                                             pixel, progress, should_stop)
    return Estimates(
        columns=columns, report=report, latent=latent, psi_model=psi_model, defocus_input=defocus_input,
        outlier_scores=result.per_detector, example_index=example_index,
        example_inputs=example["image"][:, 0].numpy(), example_canonical=example_canonical,
        class_averages=class_averages,
    )


class _Clock:
    """Seconds per named step (summed over classes), for the report: where a job's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str | None = None) -> None:
        now = time.perf_counter()
        if name is not None:
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


def _outlier_features(latent: np.ndarray, score: np.ndarray, fit_peak: np.ndarray, defocus_fit: np.ndarray,
                      defocus_input: np.ndarray | None) -> np.ndarray:
    if not np.all(np.isfinite(score)):
        # The latent alone; a covariance of L features needs several times L particles, so keep only as many
        # principal components as the particles support.
        keep = int(min(latent.shape[1], max(2, latent.shape[0] // 10)))
        centred = latent - latent.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:keep].T
    angle, radius = polar_readout(latent)
    columns = [score, radius * np.cos(angle), radius * np.sin(angle)]
    if np.all(np.isfinite(fit_peak)) and defocus_input is not None:
        columns += [fit_peak, np.abs(defocus_fit - defocus_input)]
    return np.column_stack(columns)


def _write_canonical(loaded, dataset: ParticleBatches, path: Path, box: int, pixel_size: float, progress: bool,
                     should_stop: Callable[[], bool] | None) -> np.ndarray:
    """Stream every particle's canonical image (the network's, Fourier-padded to the working ``box``) into
    ``path``; return the ``N@path`` names in STAR order."""
    import torch
    from tqdm import tqdm

    device = next(loaded.model.parameters()).device
    n, size = len(dataset), 256
    with torch.no_grad(), stack_writer(path, n, box, pixel_size) as out:
        for start in tqdm(range(0, n, size), desc="canonical images", unit="batch", leave=False,
                          disable=not progress or None):
            if should_stop is not None and should_stop():
                raise InterruptedError("stopped on request while writing canonical images")
            batch = dataset[np.arange(start, min(start + size, n))]
            ctf = batch["ctf"].to(device) if "ctf" in batch else None
            result = loaded.model.predict(batch["image"].to(device), ctf=ctf, canonical=True)
            out[start:start + len(batch["index"])] = fourier_resample(result["canonical"].float().cpu().numpy(), box)
    return np.array([format_image_name(i, str(path)) for i in range(n)], dtype=object)


def _ctf_or_none(star: ParticleStar) -> CtfParams | None:
    """The particles' CTFs, or None for particles without CTF parameters (compared as they are)."""
    if "rlnDefocusU" not in star.particles.columns:
        return None
    return star.ctf_params()


def _class_groups(star: ParticleStar, per_class: bool) -> dict[int, np.ndarray]:
    """Rows per rlnClassNumber when asked (and present), else every row as class 0."""
    n = len(star)
    if not per_class or "rlnClassNumber" not in star.particles.columns:
        return {0: np.arange(n)}
    numbers = star.particles["rlnClassNumber"].to_numpy()
    return {int(c): np.flatnonzero(numbers == c) for c in np.unique(numbers)}


def _batches(images: ParticleBatches, rows: np.ndarray, size: int = 512):
    """A re-startable iterator over ``rows`` as (positions within rows, preprocessed images)."""

    def generate():
        for start in range(0, len(rows), size):
            pos = np.arange(start, min(start + size, len(rows)))
            yield pos, images[rows[pos]]["image"][:, 0].numpy()

    return generate
