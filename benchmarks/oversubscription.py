"""Ranks sharing cores: how much slower a message exchange, a local add and two all-reduces get.

    python benchmarks/oversubscription.py            # about 2 minutes on a 2-core machine

For P = 2, 4, 8 ranks (1, 2, 4 per core on a 2-core machine) it times, in
one mpiexec run per P and interleaved so a slow spell hits them alike:
the pairwise exchange that ``parallel_lm.calibrate`` fits beta to, the
local add it fits gamma to, and the ring and recursive-doubling
all-reduces, at 256 KiB, 1 MiB and 4 MiB. It prints each time and its
slowdown against the first P. If ranks only shared the cores, every
slowdown would be P/cores; transfers come out slower than that, because a
message moves only while both ends are scheduled.
"""
import json
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
SIZES = (256 << 10, 1 << 20, 4 << 20)


def inner(reps: int) -> None:
    """Under mpiexec: print one JSON line of medians {name: {bytes: seconds}} on rank 0."""
    import numpy as np
    from mpi4py import MPI

    from parallel_lm.bench.pingpong import exchange_s, reduce_s
    from parallel_lm.bench.timing import time_collective
    from parallel_lm.comm import allreduce
    comm = MPI.COMM_WORLD
    out = {"exchange": {}, "add": {}, "ring": {}, "recursive_doubling": {}}
    for rep in range(reps):
        for n in SIZES:
            out["exchange"].setdefault(n, []).append(exchange_s(comm, n, 2, 8))
            out["add"].setdefault(n, []).append(reduce_s(comm, n, 2, 8))
            buf = np.ones(n // 4, dtype=np.float32)
            for name in ("ring", "recursive_doubling"):
                t, _ = time_collective(comm, lambda: allreduce(buf, comm, name), lambda: buf.fill(1), 2, 8)
                out[name].setdefault(n, []).append(t)
    if comm.Get_rank() == 0:
        print(json.dumps({k: {n: float(np.median(v)) for n, v in d.items()} for k, d in out.items()}))


@click.command()
@click.option("--ranks", default="2,4,8", show_default=True)
@click.option("--reps", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
@click.option("--inner", "is_inner", is_flag=True, hidden=True)
def main(ranks, reps, mpiexec, is_inner):
    if is_inner:
        return inner(reps)
    counts = [int(r) for r in ranks.split(",")]
    results = {}
    for p in counts:
        cmd = [mpiexec, "-n", str(p), sys.executable, __file__, "--inner", "--reps", str(reps)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        text = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
        results[p] = json.loads(text.strip().splitlines()[-1])
    base = counts[0]
    print("| what | bytes | " + " | ".join(f"{p} ranks: us (x vs {base})" for p in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for name in results[base]:
        for n in results[base][name]:
            cells = [f"{results[p][name][n] * 1e6:.0f} (x{results[p][name][n] / results[base][name][n]:.1f})"
                     for p in counts]
            print(f"| {name} | {int(n) >> 10}K | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
