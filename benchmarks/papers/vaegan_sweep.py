"""Paper B's VAE-GAN alone on vaegan-sim, one setting per call: the search behind README's "Paper B's VAE-GAN at
CPU size" table.

    python benchmarks/papers/vaegan_sweep.py NAME [--n 800] [--epochs 12] [--batch 16] [--seed 0] [--data-seed 0] \\
        [--opt reconstruction=bce lambda_reg=2.4e-4 ...] [--workdir W] [--out results.jsonl]

Makes (or reuses, in ``--workdir``) the same data as ``run.py vaegan-sim`` (128 px, read by the networks at
``--model-box``, 64 by default as ``--quick``), trains only the VAE-GAN (quick-size widths unless ``--full-width``)
through the project's engine on one thread, and scores the latent with the benchmark's read-out (PCA, polar
angle, eq. 7). Besides run.py's scores it prints the losses per epoch and, as ``winding``, the harmonic k for
which the latent angle best follows k·psi (k = ±1 is what the read-out needs; ±3 is the orbit that wraps three
times per turn) with its mean resultant length R (1: a perfect match). One JSON line per run goes to
``--out``; both defaults lie under ``benchmarks/papers/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import paper_data
from paper_models import ModelSpec, train_and_predict
from paper_scoring import model_paper_b

from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.preprocess import PreprocessConfig

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored, as run.py's --out
QUICK_WIDTHS = {"width": 16, "disc_width": 16, "max_width": 128}  # run.py's --quick VAE-GAN
SUMMARY = ("psi_weighted_rmse_deg", "psi_rmse_deg", "psi_median_deg", "defocus_rmse_um_eq7",
           "defocus_rmse_um_quantile", "spearman_radius_vs_defocus")


def dataset(work: Path, n: int, box: int, seed: int) -> paper_data.Dataset:
    """vaegan-sim's data, simulated once per (n, box, seed) and reused from ``work`` afterwards."""
    folder = work / f"data_n{n}_b{box}_s{seed}"
    if (folder / "vaegan-sim" / "particles.star").exists():
        rows = np.arange(n)
        return paper_data._load("vaegan-sim", folder / "vaegan-sim", rows, rows,
                                (min(paper_data.DEFOCUS_VAEGAN_SIM), max(paper_data.DEFOCUS_VAEGAN_SIM)), {})
    return paper_data.vaegan_sim(folder, n, box, seed, 1)


def winding(angle: np.ndarray, true_deg: np.ndarray) -> dict[str, float]:
    """The harmonic k in ±1…±4 whose k·psi the latent angle follows best, with its mean resultant length R,
    and R for k = ±1."""
    t = np.deg2rad(true_deg)
    r = {k: float(abs(np.mean(np.exp(1j * (angle - k * t))))) for k in range(-4, 5) if k}
    best = max(r, key=lambda k: r[k])
    return {"k": best, "R": r[best], "R_k1": max(r[1], r[-1])}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values become int, float, None or bool where they read as one."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                pass
        options[key] = {"None": None, "True": True, "False": False}.get(value, parsed)
    return options


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    options = {} if args.full_width else dict(QUICK_WIDTHS)
    options.update(parse_options(args.opt))
    data = dataset(Path(args.workdir), args.n, args.box, args.data_seed)
    spec = ModelSpec(args.name, "vaegan", options, args.epochs, args.batch)
    work = Path(args.workdir) / "runs" / args.name
    work.mkdir(parents=True, exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pred = train_and_predict(spec, data, work, PreprocessConfig(box=args.model_box), "cpu", 1, args.seed,
                             canonical=False)
    scores = model_paper_b(data, data.test, pred.psi_deg, pred.latent, args.seed)
    angle, _ = polar_readout(pred.latent)
    last = pred.history[-1]
    summary = {k: scores[k] for k in SUMMARY}
    summary.update(winding=winding(angle, data.true_psi(data.test)), seconds=time.perf_counter() - t0,
                   d_real=last.get("discriminator/d_real"), d_fake=last.get("discriminator/d_fake"),
                   name=args.name, n=args.n, epochs=args.epochs, batch=args.batch, seed=args.seed,
                   data_seed=args.data_seed, options=options,
                   command=" ".join(sys.argv))
    np.savez(work / "latent.npz", latent=pred.latent, psi=data.true_psi(data.test),
             defocus=data.true_defocus(data.test))
    _figure(work / "latent.png", args.name, pred.latent, data.true_psi(data.test), data.true_defocus(data.test))
    _print_history(pred.history)
    print(json.dumps(summary, default=float))
    with open(args.out, "a") as f:
        f.write(json.dumps({**summary, "history": pred.history}, default=float) + "\n")
    return summary


def _figure(path: Path, title: str, latent: np.ndarray, psi: np.ndarray, defocus: np.ndarray) -> None:
    """Paper B's Figure 4 for one run: read-out angle against true psi, radius against defocus, and the first two
    principal components coloured by psi and by defocus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angle, radius = polar_readout(latent)
    centred = latent - latent.mean(axis=0)
    scores = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    um = defocus / 1e4
    jitter = np.random.default_rng(0).uniform(-0.1, 0.1, len(um))
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2))
    ax[0].scatter(psi, np.degrees(angle), s=3, c=um, cmap="viridis")
    ax[0].set(xlabel="true psi (°)", ylabel="latent polar angle (°)")
    ax[1].scatter(um + jitter, radius, s=3)
    ax[1].set(xlabel="true defocus (µm)", ylabel="latent polar radius")
    for a, colour, cmap, what in ((ax[2], psi, "hsv", "psi"), (ax[3], um, "viridis", "defocus")):
        a.scatter(scores[:, 0], scores[:, 1], s=3, c=colour, cmap=cmap)
        a.set(title=f"PC1 / PC2, coloured by {what}", aspect="equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _print_history(history: list[dict[str, float]]) -> None:
    keys = [k for k in history[-1] if "/" in k]
    print("epoch " + " ".join(k.replace("discriminator/", "d:").replace("model/", "")[:10].rjust(10) for k in keys))
    for i, h in enumerate(history):
        print(f"{i:5d} " + " ".join(f"{h.get(k, float('nan')):10.4g}" for k in keys))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--n", type=int, default=800, help="particles (run.py --quick: 800)")
    p.add_argument("--box", type=int, default=128, help="data box (vaegan-sim: 128)")
    p.add_argument("--model-box", type=int, default=64, help="box the networks read (--quick: 64)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--data-seed", type=int, default=0, help="simulation seed (run.py's: 0); another one is a new set")
    p.add_argument("--full-width", action="store_true", help="the model's default widths, not --quick's")
    p.add_argument("--opt", nargs="*", default=[], help="VAEGANConfig fields, key=value")
    p.add_argument("--workdir", default=str(RESULTS / "vaegan_sweep"), help="data, models, latents, figures")
    p.add_argument("--out", default=str(RESULTS / "vaegan_sweep.jsonl"), help="one JSON line per run is appended")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
