"""Training and inference throughput of every model, side by side in one run, with peak memory.

    python benchmarks/train_speed/run.py [--n 2000 --box 64 --epochs 2 --devices cpu,cuda --out DIR]

Simulates one realistic particle set, then for each model and device trains it (in a fresh process, so
peak RSS is that model's alone) and predicts every particle. Reports particles/s for a training epoch
(the last one, warm) and for prediction (reading, preprocessing and the forward pass), peak RSS, and
each model's speed relative to the fastest. Writes results.json and results.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """One model on one device: train, predict, print a JSON line."""
    import torch

    from relion_canon.context import QUIET
    from relion_canon.io import read_star
    from relion_canon.logs import log_to
    from relion_canon.train import TrainConfig, dataset_for, load_model, run_inference, train

    torch.set_num_threads(args.threads)
    out = Path(args.workdir) / f"{args.model}_{args.device}"
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=0,
                         device=args.device, threads=args.threads)
    with log_to(sys.stderr):  # standard output carries the JSON result line
        result = train(Path(args.workdir) / "data" / "particles.star", out, config, resume=False, context=QUIET)
    loaded = load_model(result.model_path, args.device)
    dataset = dataset_for(loaded, read_star(Path(args.workdir) / "data" / "particles.star"))
    run_inference(loaded, dataset, batch_size=512, context=QUIET)  # warm-up: page cache, kernels
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_inference(loaded, dataset, batch_size=512, context=QUIET)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    infer_s = time.perf_counter() - t0
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({args.threads} threads)"
    print(json.dumps({
        "model": args.model,
        "device": device_name,
        "train_particles_per_s": result.history[-1]["particles_per_s"],
        "train_epoch_s": result.history[-1]["seconds"],
        "infer_particles_per_s": len(dataset) / infer_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", default="rotinv-ae,vaegan,spatial-vae")
    parser.add_argument("--devices", default=None, help="default: cpu, plus cuda when a GPU is visible")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", dest="model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        worker(args)
        return

    import torch

    from relion_canon.simulate import SimulationConfig, simulate_dataset

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        simulate_dataset(SimulationConfig(n_particles=args.n, box=args.box, seed=0), Path(tmp) / "data")
        rows = []
        for device in devices:
            for model in args.models.split(","):
                cmd = [sys.executable, __file__, "--worker", model, "--device", device, "--workdir", tmp,
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit(f"{model} on {device} failed:\n{res.stderr[-3000:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for device in {r["device"] for r in rows}:
        same = [r for r in rows if r["device"] == device]
        fastest = max(r["train_particles_per_s"] for r in same)
        for r in same:
            r["train_speed_vs_fastest"] = r["train_particles_per_s"] / fastest

    header = f"{'model':<12} {'device':<28} {'train p/s':>10} {'vs fastest':>10} {'predict p/s':>12} {'peak RSS MB':>12}"
    print(f"{args.n} particles, {args.box} px, batch {args.batch_size}, {args.epochs} epochs (last epoch timed)")
    print(header)
    for r in rows:
        print(f"{r['model']:<12} {r['device']:<28} {r['train_particles_per_s']:>10.0f} {r['train_speed_vs_fastest']:>10.2f} "
              f"{r['infer_particles_per_s']:>12.0f} {r['peak_rss_mb']:>12.0f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"n": args.n, "box": args.box, "epochs": args.epochs,
                                                  "batch_size": args.batch_size, "rows": rows}, indent=2))
    _plot(rows, out / "results.png", args)
    print(f"Wrote {out / 'results.json'} and {out / 'results.png'}")


def _plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['device']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "train_particles_per_s", "Training"), (axes[1], "infer_particles_per_s", "Prediction")):
        ax.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("particles / s")
        ax.set_title(f"{title} throughput ({args.box} px)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
