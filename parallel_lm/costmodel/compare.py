"""Predicted vs measured collective times, and the error table.

``compare(records, profile_for)`` takes bench records (``python -m
parallel_lm.bench --json``) and, for each rank count, the profile
calibrated with that many ranks; it predicts every record whose
algorithm has a formula and reports the relative error. The library's
own algorithm (``mpi``) has no formula here and is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formulas import COSTS
from .profiles import Profile


@dataclass(frozen=True)
class Point:
    op: str
    algorithm: str
    ranks: int
    size_bytes: int
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        """(predicted - measured) / measured."""
        return self.predicted_s / self.measured_s - 1


def predict_s(op: str, algorithm: str, size_bytes: float, ranks: int, profile: Profile) -> float:
    """Formula time with the profile's pieces for this buffer size."""
    return COSTS[op][algorithm](size_bytes, ranks).time_s(profile.network(size_bytes))


def compare(records: list[dict], profile_for) -> list[Point]:
    """``profile_for(ranks)`` gives the profile to predict runs of that many ranks with."""
    points = []
    for r in records:
        op, name = r.get("op", "allreduce"), r["algorithm"]
        if name not in COSTS.get(op, {}) or r["ranks"] < 2:
            continue
        profile = profile_for(r["ranks"])
        points.append(Point(op, name, r["ranks"], r["size_bytes"], r["time_us"] * 1e-6,
                            predict_s(op, name, r["size_bytes"], r["ranks"], profile)))
    return points


def error_table(points: list[Point], min_bytes: int = 64 << 10) -> list[dict]:
    """Median and max |error| per (algorithm, ranks) and per algorithm, for sizes >= min_bytes."""
    rows = []
    keep = [p for p in points if p.size_bytes >= min_bytes]
    for name in sorted({p.algorithm for p in keep}):
        mine = [p for p in keep if p.algorithm == name]
        for ranks in sorted({p.ranks for p in mine}) + [None]:
            sel = [p for p in mine if ranks is None or p.ranks == ranks]
            errs = np.abs([p.rel_error for p in sel]) * 100
            rows.append({"algorithm": name, "ranks": ranks if ranks is not None else "all", "points": len(sel),
                         "median_abs_pct": float(np.median(errs)), "max_abs_pct": float(np.max(errs))})
    errs = np.abs([p.rel_error for p in keep]) * 100
    if len(errs):
        rows.append({"algorithm": "all", "ranks": "all", "points": len(keep),
                     "median_abs_pct": float(np.median(errs)), "max_abs_pct": float(np.max(errs))})
    return rows


def format_table(rows: list[dict], min_bytes: int) -> str:
    lines = [f"# predicted vs measured, sizes >= {min_bytes} B: |error| in %",
             f"{'algorithm':>20} {'ranks':>5} {'points':>6} {'median':>7} {'max':>7}"]
    lines += [f"{r['algorithm']:>20} {r['ranks']!s:>5} {r['points']:>6} {r['median_abs_pct']:>7.1f} {r['max_abs_pct']:>7.1f}"
              for r in rows]
    return "\n".join(lines)
