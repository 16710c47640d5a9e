"""Score one finished job against the simulation it ran on, without running anything: what the speed
comparisons of README.md ("Speed on 2 cores") report for each run.

    python benchmarks/classify/score_job.py JOB_DIR SIMULATION_DIR

JOB_DIR holds the job's particles.star (and report.json, for the class count, rounds and seconds);
SIMULATION_DIR the simulator's ground_truth.star, joined on rlnImageName. Prints one JSON object. With
discrete views: purity, completeness and psi within classes (class_metrics); with uniform views (no view
ids) the median angle between a particle's viewing direction and its class's mean direction instead. With a
classification's report, ``per_class`` lists each class's share of true junk beside the junk-class test's
figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import class_metrics as cm  # noqa: E402

from relion_canon.analysis.estimate.junk import agreement_shortfall  # noqa: E402
from relion_canon.io.star import read_star  # noqa: E402
from relion_canon.simulate import read_ground_truth  # noqa: E402


def score_job(job_dir: Path, simulation_dir: Path) -> dict:
    out = read_star(job_dir / "particles.star").particles
    truth = read_ground_truth(simulation_dir).set_index("rlnImageName").loc[out["rlnImageName"]]
    junk = truth["rlnCanonIsJunk"].to_numpy() == 1
    good = ~junk
    cls = out["rlnClassNumber"].to_numpy()
    view = truth["rlnCanonViewId"].to_numpy()
    kept = out["rlnCanonIsOutlier"].to_numpy() == 0
    scores: dict = {"junk_auc": float(roc_auc_score(junk, out["rlnParticleSelectZScore"].to_numpy())),
                    **cm.selection_scores(junk, kept)}
    if (view[good] >= 0).all():
        psi = cm.psi_within_classes(cls[good], view[good], out["rlnAnglePsi"].to_numpy()[good],
                                    truth["rlnAnglePsi"].to_numpy()[good])
        scores.update(purity=cm.class_purity(cls[good], view[good]),
                      completeness=cm.view_completeness(cls[good], view[good]),
                      psi_rmse=psi["psi_rmse"], psi_median=psi["psi_median"])
    else:
        directions = cm.viewing_directions(truth["rlnAngleRot"].to_numpy(), truth["rlnAngleTilt"].to_numpy())
        spread = []
        for c in np.unique(cls[good]):
            members = directions[good & (cls == c)]
            mean = members.mean(axis=0)
            spread.append(np.degrees(np.arccos(np.clip(members @ (mean / np.linalg.norm(mean)), -1, 1))))
        scores["direction_spread_median_deg"] = float(np.median(np.concatenate(spread)))
    report_path = job_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        classification = report.get("classification", {})
        scores.update(classes=classification.get("n_classes"), rounds=len(classification.get("history", [])),
                      job_seconds=report["seconds"]["total"])
        if report.get("classes") and all("half_agreement" in r for r in report["classes"].values()):
            scores["per_class"] = per_class(report["classes"], cls, junk)
    return scores


def per_class(reports: dict, cls: np.ndarray, junk: np.ndarray) -> list[dict]:
    """Each class's size, share of true junk, half-set agreement, agreement shortfall (the junk-class test of
    ``relion_canon.analysis.estimate.junk``) and whether the job called it junk."""
    numbers = sorted(reports, key=int)
    sizes = np.array([reports[n]["n_particles"] for n in numbers], dtype=float)
    agreement = np.array([reports[n]["half_agreement"] for n in numbers])
    shortfall = agreement_shortfall(sizes, agreement)
    return [{"class": int(n), "n": int(size), "junk_share": float(junk[cls == int(n)].mean()) if size else 0.0,
             "half_agreement": float(a), "agreement_shortfall": float(f),
             "is_junk": bool(reports[n].get("is_junk", False))}
            for n, size, a, f in zip(numbers, sizes, agreement, shortfall)]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/classify/score_job.py JOB_DIR SIMULATION_DIR")
    print(json.dumps(score_job(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
