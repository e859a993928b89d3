"""The cost model against a real network: a cluster of namespaces on this machine, its links shaped.

    python benchmarks/cluster_accuracy.py            # about 5 minutes on a 2-core machine (needs root or userns)

One rank per core (2 here), so that oversubscription does not blur the times. For each link rate (default
1gbit and 10gbit), on a fresh cluster of 2 nodes x 1 rank (python -m parallel_lm.cluster):
  cluster run -- python -m parallel_lm.calibrate -e 16M --out DIR/profile-RATE.json   (the link between nodes)
  cluster run -- python -m parallel_lm.bench -a ring,hierarchical,mpi -b 64K -e 16M --json DIR/bench-RATE.json
  cluster run -- python -m parallel_lm.train --preset small ... --predict DIR/profile-RATE.json   (dp 2, tp 2)
and once on 1 node x 2 ranks (shared memory, the level inside a node): calibrate, then tp 2 with --predict.
Then ``python -m parallel_lm.plot comm`` compares each all-reduce with the formulas at the calibrated alpha and
beta (median and max |error|, sizes >= 64 KiB) and draws plots/cluster_RATE_p2.png; each training run's
prediction.json gives its predicted and measured median step. Prints markdown tables and writes
DIR/cluster-steps.json.
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--preset", "small", "--data", "synthetic", "--steps", "12", "--eval-every", "0", "--quiet"]
NAME = "accuracy"


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout


def cluster(*args: str) -> str:
    return run([sys.executable, "-m", "parallel_lm.cluster", *args, "--name", NAME] if args[0] != "run" else
               [sys.executable, "-m", "parallel_lm.cluster", "run", "--name", NAME, "--", *args[1:]])


def step(layout: str, flags: list[str], profile: Path, where: str, tmp: Path) -> dict:
    out = tmp / f"{where}-{layout.replace(' ', '')}"
    cluster("run", sys.executable, "-m", "parallel_lm.train", *TRAIN, *flags, "--predict", str(profile),
            "--out", str(out))
    got = json.loads((out / "prediction.json").read_text())
    predicted, measured = got["predicted"]["step_s"], got["measured"]["step_s"]
    return {"where": where, "layout": layout, "predicted_s": predicted, "measured_s": measured,
            "error": predicted / measured - 1}


@click.command()
@click.option("--rates", default="1gbit,10gbit", show_default=True)
@click.option("--out", default="docs/data/cluster", show_default=True, type=click.Path(file_okay=False))
@click.option("--plots", default="plots", show_default=True, type=click.Path(file_okay=False))
def main(rates, out, plots):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    steps, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        levels = [(rate, ["--nodes", "2", "--ranks-per-node", "1", "--link", rate]) for rate in rates.split(",")]
        for where, up in levels + [("shared-memory", ["--nodes", "1", "--ranks-per-node", "2"])]:
            cluster("up", *up)
            try:
                profile = out / f"profile-{where}.json"
                cluster("run", *py, "parallel_lm.calibrate", "-e", "16M", "--out", str(profile))
                if where != "shared-memory":
                    bench = out / f"bench-{where}.json"
                    cluster("run", *py, "parallel_lm.bench", "-a", "ring,hierarchical,mpi", "-b", "64K", "-e", "16M",
                            "-n", "5", "-w", "2", "--json", str(bench))
                    table = run([*py, "parallel_lm.plot", "comm", "--bench", str(bench), "--profile", str(profile),
                                 "--name", f"cluster_{where}", "--out", plots])
                    tables.append((where, table))
                    steps.append(step("dp 2", [], profile, where, tmp))
                steps.append(step("tp 2", ["--tp", "2"], profile, where, tmp))
            finally:
                cluster("down")
    for where, table in tables:
        print(f"\n### all-reduce across 2 nodes at {where}\n")
        print("\n".join(line for line in table.splitlines() if not line.startswith("# wrote")))
    print("\n| link | layout | predicted step ms | measured step ms | error |\n|---|---|---|---|---|")
    for s in steps:
        print(f"| {s['where']} | {s['layout']} | {s['predicted_s'] * 1e3:.1f} | {s['measured_s'] * 1e3:.1f} | "
              f"{100 * s['error']:+.1f}% |")
    print(f"\nmedian |error| of the steps: {100 * statistics.median(abs(s['error']) for s in steps):.1f}%")
    (out / "cluster-steps.json").write_text(json.dumps(steps, indent=1) + "\n")


if __name__ == "__main__":
    main()
