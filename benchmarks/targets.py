"""The foundation issue's speed targets, measured R times and summarized as ratios.

    python benchmarks/targets.py --runs 3            # about 4 minutes on a 2-core machine

Each run is one `python -m parallel_lm.bench` under mpiexec, with the
baselines in the same run (algorithms interleaved per repetition):
- ring busbw vs MPI_Allreduce and vs torch.distributed gloo at 16 MiB and
  64 MiB float32, p = 2 and 4 (`-a ring,mpi,torch_gloo -b 16M -e 64M`);
- 4 KiB latency of the best explicit algorithm vs the library's (`-a all -b 4K
  -e 4K`, a separate run without torch, whose threads perturb small messages).
Prints a markdown table: median ratio over the runs, its range, the goal.
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent


def bench(ranks: int, mpiexec: str, args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "parallel_lm.bench", *args, "--json", str(out)]
        subprocess.run(cmd, check=True, cwd=HERE.parent, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["records"]


def pick(records, algorithm, size):
    return next(r for r in records if r["algorithm"] == algorithm and r["size_bytes"] == size)


@click.command()
@click.option("--runs", default=3, show_default=True, help="Independent bench runs per rank count.")
@click.option("--ranks", default="2,4", show_default=True, help="Comma-separated rank counts.")
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(runs, ranks, mpiexec):
    rows = []  # (what, p, size, goal, [ratios])
    for p in (int(r) for r in ranks.split(",")):
        big = {k: [] for k in ("mpi16", "mpi64", "gloo16", "gloo64")}
        small = []
        for _ in range(runs):
            recs = bench(p, mpiexec, ["-a", "ring,mpi,torch_gloo", "-b", "16M", "-e", "64M", "-f", "4"])
            for size, tag in ((16 << 20, "16"), (64 << 20, "64")):
                ring = pick(recs, "ring", size)["busbw_GBps"]
                big["mpi" + tag].append(ring / pick(recs, "mpi", size)["busbw_GBps"])
                big["gloo" + tag].append(ring / pick(recs, "torch_gloo", size)["busbw_GBps"])
            recs = bench(p, mpiexec, ["-a", "all", "-b", "4K", "-e", "4K"])
            best = min(r["time_us"] for r in recs if r["algorithm"] != "mpi")
            small.append(best / pick(recs, "mpi", 4096)["time_us"])
        rows += [("ring busbw / MPI_Allreduce", p, "16 MiB", ">= 1.5", big["mpi16"], lambda m: m >= 1.5),
                 ("ring busbw / MPI_Allreduce", p, "64 MiB", ">= 1.5", big["mpi64"], lambda m: m >= 1.5),
                 ("ring busbw / torch gloo", p, "16 MiB", ">= 3", big["gloo16"], lambda m: m >= 3),
                 ("ring busbw / torch gloo", p, "64 MiB", ">= 3", big["gloo64"], lambda m: m >= 3),
                 ("best explicit time / MPI_Allreduce time", p, "4 KiB", "<= 2", small, lambda m: m <= 2)]
    print(f"| ratio | p | size | median of {runs} runs | range | goal | met |")
    print("|---|---|---|---|---|---|---|")
    for what, p, size, goal, ratios, ok in rows:
        med = statistics.median(ratios)
        print(f"| {what} | {p} | {size} | {med:.2f} | {min(ratios):.2f}-{max(ratios):.2f} | {goal} | {'yes' if ok(med) else 'no'} |")


if __name__ == "__main__":
    main()
