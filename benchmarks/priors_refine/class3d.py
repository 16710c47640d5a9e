"""RELION 3.1 Class3D with K = 2 on a mixed set, from scratch and from the job's priors (issue 16's last proof).

    python benchmarks/priors_refine/class3d.py                       # 800 ribosomes (8 views) + 800 EMD-3197, 64 px
    python benchmarks/priors_refine/class3d.py --n 300 --iterations 10 --workdir /tmp/c3 --keep   # quicker

The set: the 70S ribosome (``--views``, as priors_accuracy.py: SNR, shifts, 64 px at 4 Å) and as many particles of
a second molecule, EMD-3197 (a 20³ map at 11.4 Å, about as wide), simulated alike into one RELION project with
no other junk: the second molecule is what 3-D classification has to set apart. The reference is the ribosome
low-passed to ``--lowpass`` Å, as for the auto-refines.

- **scratch**: ``relion_refine --K 2`` over every particle with global searches (``--healpix_order 2``), the
  usual first 3-D classification.
- **priors**: the job (``relion-canon run --ref``), then, as the README tells users, only its particles with a
  prior, classified by the same command with local searches about the priors (``--healpix_order 3 --sigma_ang
  2.5``, RELION's "local angular search range" 7.5°).

Scored against the truth per particle: a class belongs to the molecule most of its particles are; a ribosome
is right in a ribosome class, a particle of the other molecule is right anywhere else (in its own class, or
left out by the job). Reported: that accuracy over all particles, the share of ribosomes that end in a ribosome
class, the share of the ribosome classes that is the other molecule, and wall and CPU seconds (the priors run counts the
job's too). Writes ``results.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import priors_accuracy as pa  # noqa: E402
from relion_project_runs import cwd, run_measured, tail  # noqa: E402

# run.py under its own name: other benchmarks have a run.py too.
_spec = importlib.util.spec_from_file_location("priors_refine_run", HERE / "run.py")
refine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refine)

OTHER = "maps/EMD-3197.map"
OTHER_APIX = 11.4  # its header's voxel size
MOLECULES = {"ribosome": (pa.RIBOSOME, pa.RIBOSOME_APIX), "other": (OTHER, OTHER_APIX)}
SCRATCH_STAR, PRIORS_STAR = "Input/particles.star", refine.PRIORS_STAR
MODES = ("scratch", "priors")


def simulate_mixed(project: Path, args: argparse.Namespace) -> dict[str, str]:
    """Both molecules into ``project/Input/<molecule>``, combined into Input/particles.star (one optics group);
    returns each image name's molecule."""
    from relion_canon.io.star import read_star, write_star
    from relion_canon.simulate import simulate_dataset

    project.mkdir(parents=True, exist_ok=True)
    (project / "default_pipeline.star").write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n")
    stars, molecule_of = [], {}
    for k, (name, (source, apix)) in enumerate(MOLECULES.items()):
        config = pa.simulation_config(args.views, args, source=source, seed=args.seed + k)
        config = dataclasses.replace(config, map_pixel_size=apix, junk_fraction=0.0)
        with cwd(project):
            simulate_dataset(config, Path("Input") / name)
        star = read_star(project / "Input" / name / "particles.star")
        stars.append(star)
        molecule_of.update({image: name for image in star.particles["rlnImageName"]})
    write_star(stars[0].with_particles(pd.concat([s.particles for s in stars], ignore_index=True)),
               project / SCRATCH_STAR)
    return molecule_of


def class3d_command(mode: str, out: str, args: argparse.Namespace) -> list[str]:
    star, search = ((SCRATCH_STAR, ["--healpix_order", "2"]) if mode == "scratch"
                    else (PRIORS_STAR, ["--healpix_order", "3", "--sigma_ang", "2.5"]))
    return ["relion_refine", "--i", star, "--o", out, "--ref", pa.REFERENCE_BOXED, "--ini_high", str(args.lowpass),
            "--firstiter_cc", "--K", "2", "--iter", str(args.iterations), "--tau2_fudge", "4", *search,
            "--offset_range", "5", "--offset_step", "2", "--sym", "C1", "--ctf", "--flatten_solvent", "--zero_mask",
            "--norm", "--scale", "--oversampling", "1", "--pad", "2", "--particle_diameter",
            str(round(refine.relion_diameter_A(args.box, args.pixel_size))), "--j", str(args.threads),
            "--random_seed", "0"]


def score_classes(classes: dict[str, int], molecule_of: dict[str, str]) -> dict:
    """Each particle's final class (``classes``: image name → class; those left out are missing) against its
    molecule: a class belongs to the molecule most of its particles are (two classes may both be ribosomes, as
    when the job has already left the other molecule out); a particle left out belongs to neither."""
    names = np.array(sorted(molecule_of))
    ribosome = np.array([molecule_of[n] == "ribosome" for n in names])
    assigned = np.array([classes.get(n, 0) for n in names])
    ribosome_classes = [int(c) for c in np.unique(assigned[assigned > 0])
                        if 2 * np.sum(ribosome & (assigned == c)) > np.sum(assigned == c)]
    in_ribosome_class = np.isin(assigned, ribosome_classes)
    return {"ribosome_classes": ribosome_classes, "n": int(len(names)), "n_classified": int(np.sum(assigned > 0)),
            "accuracy": float(np.mean(in_ribosome_class == ribosome)),
            "ribosome_recall": float(np.mean(in_ribosome_class[ribosome])) if ribosome.any() else None,
            "other_in_ribosome_class": (float(np.mean(~ribosome[in_ribosome_class])) if in_ribosome_class.any()
                                        else None)}


def last_classes(project: Path, out: str) -> tuple[int, dict[str, int]]:
    """The last iteration written and each particle's class there (image name → class)."""
    from relion_canon.io.star import read_star

    written = sorted(project.glob(f"{out}_it*_data.star"))
    if not written:
        return 0, {}
    table = read_star(written[-1]).particles
    return int(written[-1].name.split("_it")[-1][:3]), dict(zip(table["rlnImageName"],
                                                                table["rlnClassNumber"].astype(int)))


def run_mode(project: Path, mode: str, args: argparse.Namespace, molecule_of: dict[str, str]) -> dict:
    out_dir = project / "Class3D" / mode
    out_dir.mkdir(parents=True)
    out = f"Class3D/{mode}/run"
    cmd = class3d_command(mode, out, args)
    t0 = time.perf_counter()
    try:
        measured = run_measured(["nice", "-n", str(args.nice), *cmd], project, out_dir / "run.out",
                                out_dir / "run.err", args.timeout)
    except TimeoutError:
        # Stopped at --timeout: scored at the last iteration it wrote, a lower bound on its time.
        done, classes = last_classes(project, out)
        return {"command": " ".join(cmd), "timed_out": True, "wall_s": time.perf_counter() - t0,
                "iterations": done, **(score_classes(classes, molecule_of) if done else {})}
    measured["command"] = " ".join(cmd)
    if measured["returncode"] != 0:
        return {**measured, "failed": tail(out_dir / "run.err") or tail(out_dir / "run.out")}
    done, classes = last_classes(project, out)
    return {**measured, "iterations": done, **score_classes(classes, molecule_of)}


def run_all(project: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    molecule_of = simulate_mixed(project, args)
    pa.write_references(project, args.lowpass, args.box, args.pixel_size)
    row: dict = {"args": vars(args), "simulate_s": time.perf_counter() - t0, "runs": {}}
    for mode in args.modes.split(","):
        if mode == "priors":
            row["job"] = pa.run_job(project, args.threads, args.timeout, star=SCRATCH_STAR)
            row["n_with_prior"] = refine.write_inputs(project)
            if not row["n_with_prior"]:  # relion_refine crashes on an empty STAR
                row["runs"][mode] = {"failed": "the job gave no particle a prior"}
                continue
        row["runs"][mode] = run_mode(project, mode, args, molecule_of)
        print(f"{mode}: {json.dumps({k: v for k, v in row['runs'][mode].items() if k != 'command'})}", flush=True)
    return row


def table_text(row: dict) -> str:
    lines = ["| run | iterations | particles classified | accuracy | ribosomes in a ribosome class "
             "| other molecule in the ribosome classes | wall s | CPU s |", "|---|---|---|---|---|---|---|---|"]
    for mode, m in row["runs"].items():
        if "accuracy" not in m:
            lines.append(f"| {mode} | {'stopped' if m.get('timed_out') else 'failed'} | | | | | | |")
            continue
        wall, cpu = m["wall_s"], m.get("cpu_s")
        if mode == "priors":
            wall, cpu = wall + row["job"]["wall_s"], None if cpu is None else cpu + row["job"]["cpu_s"]
        wall_text = f"> {wall:.0f} (stopped)" if m.get("timed_out") else f"{wall:.0f}"
        lines.append(f"| {mode} | {m['iterations']} | {m['n_classified']} of {m['n']} "
                     f"| {pa._fmt(100 * m['accuracy'])} % "
                     f"| {pa._fmt(100 * m['ribosome_recall'])} % | {pa._fmt(100 * m['other_in_ribosome_class'])} % "
                     f"| {wall_text} | {pa._fmt(cpu, '.0f')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", default="8", help="the ribosome's: a number of views or 'uniform'")
    pa.add_set_options(parser)
    parser.set_defaults(n=800, junk=0.0)
    parser.add_argument("--iterations", type=int, default=25, help="Class3D iterations (RELION's default 25)")
    parser.add_argument("--modes", default="scratch,priors")
    parser.add_argument("--nice", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "class3d"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="class3d_", dir=args.workdir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        row = run_all(work / f"class3d_{args.views}_{args.n}_{args.box}", args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = table_text(row)
    print(text)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(row, indent=1, default=str))


if __name__ == "__main__":
    main()
