"""What is known about each class, from the job's ``report["classes"]``: one reading for the gallery figure
and for RELION's model STAR file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ClassSummary:
    number: int
    n_particles: int
    fraction: float  # of all the job's particles
    resolution_A: float | None  # None: not estimated
    accuracy_rot_deg: float | None
    accuracy_trans_A: float | None
    is_junk: bool | None  # None: the job did not judge it
    junk_reason: str | None = None


def class_summaries(class_reports: Mapping[str, Mapping[str, Any]], n_total: int) -> dict[int, ClassSummary]:
    """Class number → its summary, for every class the report holds but the whole set (class 0). The report's
    ``fraction`` and ``resolution_A`` when it gives them, else the count's share and the last refinement
    round's resolution."""
    out = {}
    for key, facts in class_reports.items():
        number = int(key)
        if number == 0:
            continue
        n = int(facts.get("n_particles", 0))
        out[number] = ClassSummary(
            number=number, n_particles=n,
            fraction=float(facts["fraction"]) if facts.get("fraction") is not None else n / max(n_total, 1),
            resolution_A=_resolution_A(facts), accuracy_rot_deg=_number(facts.get("accuracy_rot_deg")),
            accuracy_trans_A=_number(facts.get("accuracy_trans_A")),
            is_junk=None if facts.get("is_junk") is None else bool(facts["is_junk"]),
            junk_reason=facts.get("junk_reason"),
        )
    return out


def _resolution_A(facts: Mapping[str, Any]) -> float | None:
    if facts.get("resolution_A") is not None:
        return float(facts["resolution_A"])
    history = facts.get("alignment") or []
    last = history[-1] if isinstance(history, list) and history else {}
    return _number(last.get("resolution_A"))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
