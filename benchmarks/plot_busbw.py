"""Plot bus bandwidth vs message size, one line per algorithm, from a bench JSON file.

    mpiexec -n 4 python -m parallel_lm.bench -a all,torch_gloo --json bench-p4.json
    python benchmarks/plot_busbw.py bench-p4.json            # -> plots/allreduce_busbw_p4.png and .svg
"""
import json
import sys
from pathlib import Path

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from parallel_lm.sizes import format_size  # noqa: E402


@click.command()
@click.argument("bench_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="plots", show_default=True, type=click.Path(file_okay=False), help="Folder for the PNG and SVG.")
def main(bench_json, out):
    data = json.loads(Path(bench_json).read_text())
    meta, records = data["meta"], data["records"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algorithm in dict.fromkeys(r["algorithm"] for r in records):
        rows = sorted((r["size_bytes"], r["busbw_GBps"]) for r in records if r["algorithm"] == algorithm)
        ax.plot([s for s, _ in rows], [b for _, b in rows], marker="o", label=algorithm,
                linestyle="--" if algorithm in ("mpi", "torch_gloo") else "-")
    ax.set_xscale("log", base=2)
    sizes = sorted({r["size_bytes"] for r in records})
    ax.set_xticks(sizes, [format_size(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(f"{meta['op']} on {meta['ranks']} ranks ({meta['mpi_library']})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    Path(out).mkdir(parents=True, exist_ok=True)
    stem = Path(out) / f"{meta['op']}_busbw_p{meta['ranks']}"
    for ext in ("png", "svg"):
        fig.savefig(f"{stem}.{ext}", dpi=120, bbox_inches="tight")
    sys.stdout.write(f"wrote {stem}.png and {stem}.svg\n")


if __name__ == "__main__":
    main()
