"""`relion-canon demo`: the README's main job on the built-in default dataset, end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from relion_canon.simulate import SimulationConfig, simulate_dataset


@click.command("demo")
@click.option("--o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Output folder: data/ (the simulated set), job/ (the job), evaluation/.")
@click.option("--n", "n_particles", type=int, default=SimulationConfig.n_particles, show_default=True,
              help="Number of particles to simulate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--j", "threads", type=int, default=None, help="CPU threads (default: all).")
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when there is one), cpu, cuda.")
def demo(out_dir: Path, n_particles: int, seed: int, threads: int | None, device: str) -> None:
    """Simulate the default realistic dataset, run the whole job on it, and score it against the truth.

    Built-in phantom, 64 px at 2.5 Å/px, one view, uniform psi, SNR 0.1, defocus 0.5-2.5 µm, 10 % junk.
    """
    from relion_canon.analysis.evaluation import evaluate
    from relion_canon.analysis.report import write_evaluation
    from relion_canon.logs import log_to
    from relion_canon.job import JobConfig, run_job

    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    config = SimulationConfig(n_particles=n_particles, seed=seed, overwrite=True)
    data_dir, job_dir, eval_dir = out_dir / "data", out_dir / "job", out_dir / "evaluation"
    click.echo(f"[1/3] Simulating {n_particles} particles ({config.box} px, SNR {config.snr}, "
               f"{config.junk_fraction:.0%} junk) into {data_dir}/")
    with tqdm(total=n_particles, desc="simulating", unit="particle", leave=False, file=sys.stderr) as bar:
        sim = simulate_dataset(config, data_dir, progress=bar.update)
    click.echo(f"      {sim.n_particles} particles, {sim.n_junk} junk, measured SNR {sim.snr_measured:.3g}, "
               f"{sim.seconds:.1f} s")
    click.echo(f"[2/3] Running the job (defaults, as `relion-canon run` or RELION's Run button) into {job_dir}/")
    t_job = time.perf_counter()
    with log_to(lambda line: click.echo(f"      {line}")):
        job = run_job(sim.particles_star, job_dir,
                      JobConfig(device=device, threads=threads, seed=seed, write_canonical=True), resume=False)
    job_seconds = time.perf_counter() - t_job
    click.echo(f"[3/3] Scoring the job against the ground truth into {eval_dir}/")
    evaluation = evaluate(job_dir, data_dir)
    paths = write_evaluation(eval_dir, evaluation)
    click.echo("")
    click.echo(evaluation.to_markdown())
    click.echo("")
    click.echo(f"Job: {job_seconds:.1f} s; demo: {time.perf_counter() - t0:.1f} s in all")
    click.echo(f"Particles with estimates: {job.particles_star}")
    click.echo(f"Junk removed:             {job.selected_star}")
    click.echo(f"Figures:                  {job.logfile}")
    click.echo(f"Evaluation:               {', '.join(str(p) for p in paths if p.suffix in ('.md', '.pdf'))}")
