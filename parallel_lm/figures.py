"""Figures for the lessons' ``--plot``: timelines of spans and curves, saved as PNG under plots/lessons/ ($PARALLEL_LM_PLOTS).

    mpiexec -n 4 python lessons/07_buckets_and_overlap.py --plot

Only rank 0 draws. ``gantt`` draws rows of spans (a thread's or a
pipeline stage's work over time); ``save`` writes the figure and says where
(through ``write``, which ``python -m parallel_lm.plot`` uses too).
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
