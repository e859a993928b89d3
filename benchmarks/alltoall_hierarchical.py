"""All-to-all and the hierarchical all-reduce, measured against the MPI library and against their formulas.

    python benchmarks/alltoall_hierarchical.py          # about 5 minutes on a 2-core machine

1. ``bench --op all_to_all`` on 4 and 8 ranks: pairwise and Bruck against MPI_Alltoall (vs_mpi ratios).
2. The same on 8 ranks under ``--netem alpha=5e-5,beta=1e-9`` (every message 50 us + 1 GB/s): measured
   against ``costmodel.formulas`` with that alpha and beta, which puts the Bruck/pairwise crossover at
   4.alpha / ((lg p / 2 - (p-1)/p).beta) = 320 KB.
3. ``-a ring,hierarchical`` on 4 ranks as 2 emulated nodes of 2, messages between nodes at 50 us +
   0.1 GB/s and inside a node at this machine's speed, with 2 rails and with 1 (a leader per node):
   measured against the flat ring's formula and the two-level formula (inside a node: the measured
   memory speed of one add, for the copies and the additions).
Prints markdown tables (docs/benchmarks.md) and keeps the JSON under --out.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from parallel_lm.costmodel.formulas import COSTS, Network, allreduce_hierarchical_s  # noqa: E402

A2A_NETEM = "alpha=5e-5,beta=1e-9"
TWO_LEVEL = "alpha=0,beta=0,inter_alpha=5e-5,inter_beta=1e-8,ranks_per_node=2"


def bench(mpiexec: str, ranks: int, args: list[str], out: Path) -> list[dict]:
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "parallel_lm.bench", *args, "--json", str(out)]
    print("$ " + " ".join(cmd[:1] + cmd[1:3] + ["python"] + cmd[4:]), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return json.loads(out.read_text())["records"]


def gamma_s_per_byte() -> float:
    """This machine's time to add one byte of float32 (16 MiB, median of 7)."""
    a, b = np.ones(1 << 22, np.float32), np.ones(1 << 22, np.float32)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        np.add(a, b, out=a)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / a.nbytes


def by_size(records):
    table = {}
    for r in records:
        table.setdefault(r["size_bytes"], {})[r["algorithm"]] = r
    return sorted(table.items())


@click.command()
@click.option("--out", default="docs/data/alltoall_hierarchical", show_default=True, type=click.Path(file_okay=False))
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(out, mpiexec):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print("### all-to-all against MPI_Alltoall (time relative: vs_mpi = library time / time)\n")
    for p in (4, 8):
        rec = bench(mpiexec, p, ["--op", "all_to_all", "-b", "64", "-e", "16M", "-f", "16", "-n", "10"],
                    out / f"alltoall-p{p}.json")
        print(f"{p} ranks\n\n| bytes per rank | MPI_Alltoall us | pairwise vs_mpi | bruck vs_mpi |\n|---|---|---|---|")
        for size, row in by_size(rec):
            print(f"| {size} | {row['mpi']['time_us']:.1f} | {row['pairwise']['vs_mpi']:.2f} | {row['bruck']['vs_mpi']:.2f} |")
        print()

    net = Network(5e-5, 1e-9)
    rec = bench(mpiexec, 8, ["--op", "all_to_all", "-a", "pairwise,bruck", "-b", "1K", "-e", "16M", "-f", "4",
                             "-n", "5", "-w", "2", "--netem", A2A_NETEM], out / "alltoall-netem-p8.json")
    print(f"### all-to-all on 8 ranks under --netem {A2A_NETEM}: measured / formula\n")
    print("| bytes per rank | pairwise us | formula | bruck us | formula | faster, measured | faster, formula |")
    print("|---|---|---|---|---|---|---|")
    for size, row in by_size(rec):
        f = {a: COSTS["all_to_all"][a](row[a]["size_bytes"], 8).time_s(net) * 1e6 for a in ("pairwise", "bruck")}
        m = {a: row[a]["time_us"] for a in ("pairwise", "bruck")}
        print(f"| {size} | {m['pairwise']:.0f} | {f['pairwise']:.0f} | {m['bruck']:.0f} | {f['bruck']:.0f} | "
              f"{min(m, key=m.get)} | {min(f, key=f.get)} |")
    print()

    gamma = gamma_s_per_byte()
    intra, inter = Network(0.0, gamma / 3, gamma), Network(5e-5, 1e-8)  # a copy moves a third of an add's bytes
    print(f"### ring vs hierarchical on 4 ranks = 2 emulated nodes, --netem {TWO_LEVEL}\n")
    print(f"(this machine adds float32 at {1e-9 / gamma:.2f} GB/s: the intra-node level of the formula)\n")
    print("| bytes | ring us | formula | hierarchical 2 rails us | formula | 1 rail us | formula | ring / hier. 2 rails |")
    print("|---|---|---|---|---|---|---|---|")
    runs = {r: bench(mpiexec, 4, ["-a", "ring,hierarchical", "-b", "4K", "-e", "16M", "-f", "4", "-n", "5", "-w", "2",
                                  "--netem", TWO_LEVEL, "--rails", str(r)], out / f"hier-rails{r}.json") for r in (2, 1)}
    two, one = dict(by_size(runs[2])), dict(by_size(runs[1]))
    for size in sorted(two):
        ring = COSTS["allreduce"]["ring"](size, 4).time_s(Network(5e-5, 1e-8, gamma)) * 1e6
        h2 = allreduce_hierarchical_s(size, 2, 2, intra, inter, rails=2, rings=2) * 1e6
        h1 = allreduce_hierarchical_s(size, 2, 2, intra, inter, rails=2, rings=1) * 1e6
        print(f"| {size} | {two[size]['ring']['time_us']:.0f} | {ring:.0f} | {two[size]['hierarchical']['time_us']:.0f} "
              f"| {h2:.0f} | {one[size]['hierarchical']['time_us']:.0f} | {h1:.0f} | "
              f"{two[size]['ring']['time_us'] / two[size]['hierarchical']['time_us']:.2f} |")


if __name__ == "__main__":
    main()
