"""Model parallelism on this machine: tokens/s per layout at 8 ranks, and the pipeline bubble vs its formula.

    python benchmarks/layouts.py                     # about 8 minutes on a 2-core machine
    python benchmarks/layouts.py --part bubble       # only the bubble table

Every point is one `python -m parallel_lm.train` run (benchmarks/train_bench.py's
``run``: median over the steps after the first 3). Layouts: the small preset,
global batch 32, 8 ranks. Bubble: pp = 2 on 2 ranks and pp = 4 on 4 ranks,
m = 1, 2, 4, 8 micro-batches, 1F1B and GPipe; the measured bubble is the
mean over stages of 1 - compute time / pipeline time, beside (p-1)/(m+p-1).
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"dp 8": [], "dp 8, ZeRO-1": ["--zero", "1"], "dp 8, ZeRO-2": ["--zero", "2"],
           "dp 4 x tp 2": ["--tp", "2"], "dp 4 x pp 2 (m 2)": ["--pp", "2", "--micro-batches", "2"],
           "dp 2 x tp 2 x pp 2, ZeRO-1": ["--tp", "2", "--pp", "2", "--zero", "1", "--micro-batches", "2"],
           "tp 8": ["--tp", "8", "--n-head", "8", "--global-batch-size", "32"],
           "pp 4 x dp 2 (m 4)": ["--pp", "4", "--micro-batches", "4"]}


def run(mpiexec, ranks, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "parallel_lm.train", "--data", "synthetic",
               "--eval-every", "0", "--eval-batches", "1", "--quiet", "--out", tmp, *map(str, args)]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][3:]


def layouts(mpiexec):
    print("| layout (8 ranks, small preset, batch 32) | tokens/s | comm ms/step |")
    print("|---|---|---|")
    for name, extra in LAYOUTS.items():
        recs = run(mpiexec, 8, ["--preset", "small", "--steps", "15", "--global-batch-size", "32", *extra])
        print(f"| {name} | {statistics.median(r['tokens_per_s'] for r in recs):,.0f} | "
              f"{statistics.median(r['comm_s'] for r in recs) * 1e3:.1f} |", flush=True)


def bubble(mpiexec):
    print("\n| pp | m | schedule | measured bubble | formula (p-1)/(m+p-1) |")
    print("|---|---|---|---|---|")
    for pp in (2, 4):
        for m in (1, 2, 4, 8):
            for kind in ("1f1b", "gpipe"):
                recs = run(mpiexec, pp, ["--preset", "small", "--n-layer", "8", "--pp", pp, "--micro-batches", m,
                                         "--global-batch-size", 2 * m, "--steps", "12", "--schedule", kind])
                measured = statistics.median(r["bubble"] for r in recs)
                print(f"| {pp} | {m} | {kind} | {measured:.3f} | {recs[0]['bubble_formula']:.3f} |", flush=True)


@click.command()
@click.option("--part", type=click.Choice(["all", "layouts", "bubble"]), default="all")
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(part, mpiexec):
    if part in ("all", "layouts"):
        layouts(mpiexec)
    if part in ("all", "bubble"):
        bubble(mpiexec)


if __name__ == "__main__":
    main()
