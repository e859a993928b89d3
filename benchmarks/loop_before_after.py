"""Training tokens/s of two versions of the code, side by side: dp, tp, pp and ZeRO-3 layouts on 4 ranks.

    python benchmarks/loop_before_after.py --before 7337d6e                   # about 8 minutes on 2 cores
    python benchmarks/loop_before_after.py --before 26b090f --after c378a10   # the one-loop change
    python benchmarks/loop_before_after.py --before 505d686 --layout "dp 2 x pp 2 (m 2)" --repeats 7   # one row

A restructuring of the training code must not cost speed. ``--before REV``
(and ``--after REV``, else the working tree) is checked out into a temporary
git worktree, and each layout runs alternately on the two trees,
``--repeats`` times, so a slow spell of the machine hits both alike; which tree
runs first alternates as well (the same tree against itself gave 0.97 for the
second of each pair). Every
point is one ``python -m parallel_lm.train`` under mpiexec, the median
tokens/s of its steps after the first 3; the table shows the median over
repeats and the ratio after / before. A second table times a refused
launch (``--lr nan`` on 4 ranks: how long bad input takes to end the job).
Prints markdown tables for docs/benchmarks.md.
"""
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"dp 4": [], "dp 2 x tp 2": ["--tp", "2"], "dp 2 x pp 2 (m 2)": ["--pp", "2", "--micro-batches", "2"],
           "dp 4, ZeRO-3": ["--zero", "3"]}


def tokens_per_s(mpiexec, tree: Path, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", "--data", "synthetic", "--preset", "small",
               "--global-batch-size", "16", "--steps", "12", "--eval-every", "0", "--eval-batches", "1", "--quiet",
               "--out", tmp, *args]
        subprocess.run(cmd, check=True, cwd=tree, stdout=subprocess.DEVNULL, env={"PYTHONPATH": str(tree),
                                                                                 "PATH": str(Path(sys.executable).parent)})
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][3:]
    return statistics.median(r["tokens_per_s"] for r in recs)


def refusal_s(mpiexec, tree: Path) -> float:
    """Wall seconds of ``mpiexec -n 4 python -m parallel_lm.train --lr nan`` ending with its error (exit 2)."""
    start = time.perf_counter()
    proc = subprocess.run([mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", "--lr", "nan"], cwd=tree,
                          capture_output=True, env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)})
    assert proc.returncode == 2, proc.stderr
    return time.perf_counter() - start


@click.command()
@click.option("--before", required=True, help="The git revision to compare with.")
@click.option("--after", help="The revision to compare it with (default: this working tree).")
@click.option("--repeats", default=3, show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
@click.option("--layout", "layouts", multiple=True, type=click.Choice(list(LAYOUTS)),
              help="Only these layouts (repeatable; default: all), and no refused launch: to rerun a noisy row.")
def main(before, after, repeats, mpiexec, layouts):
    with tempfile.TemporaryDirectory() as tmp:
        trees = []
        for name, rev in (("before", before), ("after", after)):
            if rev:
                trees.append(Path(tmp) / name)
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[-1]), rev],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        old, new = trees[0], (trees[1] if after else ROOT)
        try:
            print(f"| layout (4 ranks, small preset, batch 16) | before ({before}) tok/s | after ({after or 'tree'}) tok/s "
                  "| after / before |")
            print("|---|---|---|---|")
            for name, args in LAYOUTS.items():
                if layouts and name not in layouts:
                    continue
                runs = {"before": [], "after": []}
                for i in range(repeats):  # which tree goes first alternates too: the second of a pair ran ~3%
                    for which in (("before", "after") if i % 2 == 0 else ("after", "before")):  # slower, same code
                        runs[which].append(tokens_per_s(mpiexec, old if which == "before" else new, args))
                b, a = statistics.median(runs["before"]), statistics.median(runs["after"])
                print(f"| {name} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |", flush=True)
            if layouts:
                return
            runs = {"before": [], "after": []}
            for _ in range(repeats):
                runs["before"].append(refusal_s(mpiexec, old))
                runs["after"].append(refusal_s(mpiexec, new))
            b, a = statistics.median(runs["before"]), statistics.median(runs["after"])
            print(f"\n| refused launch (4 ranks, --lr nan) | before s | after s | after / before |\n|---|---|---|---|\n"
                  f"| wall time to exit 2 | {b:.2f} | {a:.2f} | {a / b:.2f} |")
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


if __name__ == "__main__":
    main()
