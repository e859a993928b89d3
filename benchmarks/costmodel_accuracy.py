"""Cost-model accuracy on this machine: calibrate, bench, predict, compare; bare and under netem.

    python benchmarks/costmodel_accuracy.py            # about 6 minutes on a 2-core machine

For each rank count P (default 2, 4, 8), back to back so the machine is
in the same state:
  mpiexec -n P python -m parallel_lm.calibrate --out DIR/profile-pP.json
  mpiexec -n P python -m parallel_lm.bench -b 4K -e 64M -n 10 --json DIR/bench-pP.json
  mpiexec -n P python -m parallel_lm.bench -b 64K -e 16M -n 5 --netem eth-10g --json DIR/netem-pP.json
then
  python -m parallel_lm.plot comm --bench DIR/bench-p*.json --profile DIR/profile-p*.json --name comm
  python -m parallel_lm.plot comm --bench DIR/netem-p*.json --profile DIR/profile-p*.json --name comm_netem
which print the error tables (median and max |error| per algorithm and P,
sizes >= 64 KiB) and draw plots/comm_p*.png and plots/comm_netem_p*.png.
"""
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout


@click.command()
@click.option("--ranks", default="2,4,8", show_default=True)
@click.option("--out", default="docs/data/accuracy", show_default=True, type=click.Path(file_okay=False))
@click.option("--plots", default="plots", show_default=True, type=click.Path(file_okay=False))
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(ranks, out, plots, mpiexec):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    counts = [int(r) for r in ranks.split(",")]
    for p in counts:
        mpi = [mpiexec, "-n", str(p), *py]
        run([*mpi, "parallel_lm.calibrate", "--out", str(out / f"profile-p{p}.json")])
        run([*mpi, "parallel_lm.bench", "-b", "4K", "-e", "64M", "-n", "10", "--json", str(out / f"bench-p{p}.json")])
        run([*mpi, "parallel_lm.bench", "-b", "64K", "-e", "16M", "-n", "5", "-w", "2", "--netem", "eth-10g",
             "--json", str(out / f"netem-p{p}.json")])
    profiles = [a for p in counts for a in ("--profile", str(out / f"profile-p{p}.json"))]
    for kind, name in (("bench", "comm"), ("netem", "comm_netem")):
        benches = [a for p in counts for a in ("--bench", str(out / f"{kind}-p{p}.json"))]
        table = run([*py, "parallel_lm.plot", "comm", *benches, *profiles, "--name", name, "--out", plots])
        print(f"\n## {'bare shared memory' if kind == 'bench' else 'under --netem eth-10g'}\n")
        print("\n".join(line for line in table.splitlines() if not line.startswith("# wrote")))


if __name__ == "__main__":
    main()
