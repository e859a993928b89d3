"""Parameter server with an update budget: wall time to N applied updates, synchronous vs asynchronous.

    python benchmarks/ps_budget.py                    # about 4 minutes on a 2-core machine
    python benchmarks/ps_budget.py --preset small     # compute weighs more against messages

Every point is one ``mpiexec -n 4 python -m parallel_lm.train --sync ps
--ps-updates N`` (1 server, 3 workers, global batch 6, ``--preset``): the job
ends after N optimizer updates on the server, whoever made them. A
synchronous update averages all 3 workers' gradients of a step; an
asynchronous one applies one worker's gradient. With a straggler (rank 3
computing 4x slower), every synchronous update waits for it, while the
asynchronous server keeps taking the fast workers' gradients. Runs
alternate between the settings and repeat (--repeats); the table shows the
median wall time of the training part (the line the run prints), the
updates each worker contributed, and the validation loss reached.
"""
import re
import statistics
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"sync": ["--staleness", "0"], "async": ["--staleness", "inf"]}


def run(mpiexec, preset, updates, extra) -> tuple[float, float]:
    """(seconds of training, validation loss) of one run."""
    cmd = [mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", "--data", "synthetic", "--sync", "ps",
           "--preset", preset,
           "--global-batch-size", "6", "--steps", "100000", "--ps-updates", str(updates), "--eval-every", "0",
           "--quiet", *extra]
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    seconds = float(re.search(r"; ([0-9.]+) s$", out, re.M).group(1))
    loss = float(re.search(r"validation loss ([0-9.]+)", out).group(1))
    return seconds, loss


@click.command()
@click.option("--updates", default=60, show_default=True)
@click.option("--preset", default="tiny", show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(updates, preset, repeats, mpiexec):
    print(f"| straggler | mode | seconds to {updates} updates ({preset}) | validation loss | async / sync time |")
    print("|---|---|---|---|---|")
    for straggler in ([], ["--straggler", "3:4"]):
        results = {name: [] for name in SETTINGS}
        for _ in range(repeats):
            for name, args in SETTINGS.items():
                results[name].append(run(mpiexec, preset, updates, args + straggler))
        times = {name: statistics.median(t for t, _ in r) for name, r in results.items()}
        for name, r in results.items():
            ratio = f"{times['async'] / times['sync']:.2f}" if name == "async" else ""
            print(f"| {'rank 3 x4' if straggler else 'none'} | {name} | {times[name]:.2f} | "
                  f"{statistics.median(v for _, v in r):.4f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
