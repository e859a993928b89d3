"""Tensor- and pipeline-parallel tokens/s before and after the one training loop (bucketed, overlapped dp sync).

    python benchmarks/loop_before_after.py --before 26b090f --after c378a10   # about 8 minutes on 2 cores

Before the one loop, tp and pp runs averaged their gradients over the
data-parallel group with one flat all-reduce after the pipeline (concatenate,
all-reduce, copy back). Now they go through the same bucketed sync as plain
data parallelism, all-reduced during backward. This runs both versions of the
code side by side: ``--before REV`` (and ``--after REV``, else the working
tree) is checked out into a temporary git worktree, and each layout runs
alternately on the two trees,
``--repeats`` times, so a slow spell of the machine hits both alike. Every
point is one ``python -m parallel_lm.train`` under mpiexec, the median
tokens/s of its steps after the first 3; the table shows the median over
repeats and the ratio after / before. Prints a markdown table for
docs/benchmarks.md.
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"dp 2 x tp 2": ["--tp", "2"], "dp 2 x pp 2 (m 2)": ["--pp", "2", "--micro-batches", "2"],
           "dp 2 x tp 2, bucket 0.25 MB": ["--tp", "2", "--bucket-mb", "0.25"],
           "dp 2 x pp 2 (m 2), bucket 0.25 MB": ["--pp", "2", "--micro-batches", "2", "--bucket-mb", "0.25"]}


def tokens_per_s(mpiexec, tree: Path, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", "--data", "synthetic", "--preset", "small",
               "--global-batch-size", "16", "--steps", "12", "--eval-every", "0", "--eval-batches", "1", "--quiet",
               "--out", tmp, *args]
        subprocess.run(cmd, check=True, cwd=tree, stdout=subprocess.DEVNULL, env={"PYTHONPATH": str(tree),
                                                                                 "PATH": str(Path(sys.executable).parent)})
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][3:]
    return statistics.median(r["tokens_per_s"] for r in recs)


@click.command()
@click.option("--before", required=True, help="The git revision to compare with (the last one before the one loop).")
@click.option("--after", help="The revision with the one loop (default: this working tree).")
@click.option("--repeats", default=3, show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(before, after, repeats, mpiexec):
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
                runs = {"before": [], "after": []}
                for _ in range(repeats):
                    runs["before"].append(tokens_per_s(mpiexec, old, args))
                    runs["after"].append(tokens_per_s(mpiexec, new, args))
                b, a = statistics.median(runs["before"]), statistics.median(runs["after"])
                print(f"| {name} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |", flush=True)
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


if __name__ == "__main__":
    main()
