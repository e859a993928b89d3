"""Figures for the lessons' ``--plot``: timelines of spans and curves, saved as PNG under plots/lessons/ ($PARALLEL_LM_PLOTS).

    mpiexec -n 4 python lessons/07_buckets_and_overlap.py --plot

Only rank 0 draws. ``gantt`` draws rows of spans (a thread's or a
pipeline stage's work over time); ``save`` writes the figure and says where
(through ``write``, which ``python -m parallel_lm.plot`` uses too); ``run_figure`` draws training runs'
metrics for ``python -m parallel_lm.plot run``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .environment import current  # noqa: E402

def out_dir() -> Path:
    """plots/lessons/ under the current directory, or $PARALLEL_LM_PLOTS (environment.py)."""
    return current().plots


def wanted() -> bool:
    """True if the lesson was run with --plot."""
    return "--plot" in sys.argv[1:]


def write(fig, out: Path, stem: str, formats=("png", "svg"), dpi: int = 130) -> list[Path]:
    """Save ``fig`` as out/STEM.FORMAT for each format and close it (``plot``'s figures too)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{kind}" for kind in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def save(fig, name: str) -> Path:
    """A lesson's figure: out_dir()/NAME.png."""
    return write(fig, out_dir(), name, ("png",), dpi=120)[0]


def gantt(ax, rows: list[tuple[str, list[tuple[float, float, str, str]]]], unit: str) -> None:
    """One horizontal lane per row, top to bottom: (label, [(start, duration, text, colour), ...])."""
    for lane, (label, spans) in enumerate(rows):
        y = len(rows) - 1 - lane
        for start, duration, text, colour in spans:
            ax.broken_barh([(start, duration)], (y - 0.4, 0.8), facecolors=colour, edgecolors="black", linewidth=0.4)
            if text:
                ax.text(start + duration / 2, y, text, ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)])
    if unit:
        ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)


RUN_PANELS = (  # (title, y label, the records' fields drawn: a line, then a dashed line, and the scale of both)
    ("loss", "nats per byte", ("loss", "val_loss"), 1.0),
    ("throughput", "tokens/s", ("tokens_per_s",), 1.0),
    ("communication", "ms per step", ("exposed_comm_s",), 1e3),
    ("memory on rank 0", "MiB", ("memory_mib", "memory_formula_mib"), 1.0),
)
DASHED = {"val_loss": "validation", "memory_formula_mib": "formula"}
SHADED = {"exposed_comm_s": ("comm_s", "all communication")}  # drawn as a band under the line: exposed <= all


def run_figure(runs: list[tuple[str, list[dict]]]):
    """The figure of ``python -m parallel_lm.plot run``: for each (name, metrics.jsonl records) of ``runs``, one
    line in each of RUN_PANELS; every axis but the loss's from 0."""
    fig, axes = plt.subplots(1, len(RUN_PANELS), figsize=(4.2 * len(RUN_PANELS), 3.6))
    for i, (name, records) in enumerate(runs):
        colour = f"C{i % 10}"
        for ax, (title, unit, fields, scale) in zip(axes, RUN_PANELS):
            for field, style in zip(fields, ("-", "--")):
                rows = [r for r in records if r.get(field) is not None]
                if not rows:
                    continue
                steps = [r["step"] for r in rows]
                if field in SHADED:
                    whole, label = SHADED[field]
                    ax.fill_between(steps, 0, [r[whole] * scale for r in rows],
                                    color=colour, alpha=0.25, linewidth=0, label=f"{name} ({label})")
                ax.plot(steps, [r[field] * scale for r in rows], style, color=colour,
                        marker="o" if len(rows) < 3 else None,
                        label=name + (f" ({DASHED[field]})" if field in DASHED else
                                      " (exposed)" if field in SHADED else ""))
            ax.set_title(title)
            ax.set_ylabel(unit)
            ax.set_xlabel("step")
    for ax, (title, *_) in zip(axes, RUN_PANELS):
        if ax.lines:
            ax.legend(fontsize=7)
            if title != "loss":  # a near-constant series would otherwise fill the axis (once 0.01 MiB tall)
                ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-9) * 1.05)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
