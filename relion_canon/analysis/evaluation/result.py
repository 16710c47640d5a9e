"""The result of an evaluation: every metric of a job against one reference, as JSON and as a markdown table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from relion_canon.analysis.evaluation.metrics import (
    AngleMetrics,
    CanonicalMetrics,
    DefocusMetrics,
    OutlierMetrics,
)


@dataclass
class Evaluation:
    """A job's answers scored against a reference; :meth:`to_markdown` and :meth:`to_dict` report it."""

    job: str
    reference: str
    n_particles: int  # in the job's STAR
    n_evaluated: int  # in the angle/defocus/canonical subset
    subset: str  # which particles the angle/defocus/canonical metrics use
    angle: AngleMetrics | None
    defocus: DefocusMetrics | None
    outliers: OutlierMetrics | None
    canonical: CanonicalMetrics | None
    peer: dict[str, AngleMetrics] = field(default_factory=dict)  # other methods' angles, same truth and subset
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "reference": self.reference,
            "n_particles": self.n_particles,
            "n_evaluated": self.n_evaluated,
            "subset": self.subset,
            "angle": self.angle.to_dict() if self.angle else None,
            "defocus": self.defocus.to_dict() if self.defocus else None,
            "outliers": self.outliers.to_dict() if self.outliers else None,
            "canonical": self.canonical.to_dict() if self.canonical else None,
            "peer": {name: m.to_dict() for name, m in self.peer.items()},
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """One table (a column per method) and the notes that qualify it."""
        peers = list(self.peer)
        table = _Table(len(peers))
        _angle_rows(table, self.angle, [self.peer[p] for p in peers])
        _defocus_rows(table, self.defocus)
        _outlier_rows(table, self.outliers, peers)
        _canonical_rows(table, self.canonical)
        header = ["metric", "relion_canon", *peers]
        lines = [
            f"## Evaluation of {self.job}",
            "",
            f"Reference: {self.reference}. Angle, defocus and canonical metrics on {self.subset} "
            f"({self.n_evaluated} of {self.n_particles} particles).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in table.rows]
        notes = list(self.notes)
        if self.canonical:
            notes.append(f"Canonical MSE: {self.canonical.normalisation}.")
        if notes:
            lines += ["", "Notes:", *[f"- {n}" for n in notes]]
        return "\n".join(lines) + "\n"


class _Table:
    """The markdown table's rows: a metric, the job's value, then one value per peer ("–" where none)."""

    def __init__(self, n_peers: int):
        self.n_peers = n_peers
        self.rows: list[list[str]] = []

    def add(self, metric: str, ours: Any, others: list[Any] | None = None) -> None:
        self.rows.append([metric, _fmt(ours), *[_fmt(v) for v in (others or [None] * self.n_peers)]])


def _angle_rows(table: _Table, a: AngleMetrics | None, others: list[AngleMetrics]) -> None:
    n_fold = 1 if a is None else a.symmetry
    unit = "°" if n_fold == 1 else f"°, mod {360 / n_fold:g}°"
    table.add(f"psi rMSE ({unit})", a.rmse_deg if a else None, [p.rmse_deg for p in others])
    table.add("psi median \\|error\\| (°)", a.median_deg if a else None, [p.median_deg for p in others])
    table.add("psi weighted rMSE, w = exp(def̂) − 1 (°)", a.weighted_rmse_deg if a else None,
              [p.weighted_rmse_deg for p in others])
    table.add("psi global offset (°) / sign", f"{a.offset_deg:.2f} / {a.sign:+d}" if a else None,
              [f"{p.offset_deg:.2f} / {p.sign:+d}" for p in others])
    table.add("particles (angle)", a.n if a else None, [p.n for p in others])


def _defocus_rows(table: _Table, d: DefocusMetrics | None) -> None:
    table.add("defocus rMSE (µm)", d.rmse_um if d else None)
    table.add("defocus mean error (µm)", d.mean_error_um if d else None)


def _outlier_rows(table: _Table, o: OutlierMetrics | None, peers: list[str]) -> None:
    if o is None:
        table.add("outlier ROC AUC", None)
        return
    ours = next(iter(o.auc.values()), None)
    table.add("outlier ROC AUC", ours, [o.auc.get(p) for p in peers])
    table.add(f"outlier precision @ threshold {_fmt(o.threshold)}", o.precision)
    table.add(f"outlier recall @ threshold {_fmt(o.threshold)}", o.recall)
    for kind, value in o.recall_by_kind.items():
        table.add(f"recall, junk kind {kind}", value)
    table.add("outlier labels (positive / all)", f"{o.n_positive} / {o.n}")


def _canonical_rows(table: _Table, c: CanonicalMetrics | None) -> None:
    table.add("canonical MSE, mean", c.mean_mse if c else None)
    table.add("canonical MSE, worst", f"{c.worst_mse:.4g} (row {c.worst_row})" if c else None)
    if c:
        frame = f"{c.rotation_deg:.2f} / {'yes' if c.mirrored else 'no'}"
        if c.frames > 1:
            frame += f" (largest class's; {c.frames} frames, one per class)"
        table.add("canonical frame rotation (°) / mirrored", frame)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)
