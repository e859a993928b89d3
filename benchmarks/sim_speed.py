"""How fast the simulator runs each algorithm on many virtual ranks (timing-only mode).

    python benchmarks/sim_speed.py                    # about a minute

Wall-clock seconds for one 64 MiB all-reduce on P = 1,024 and 4,096
virtual ranks of a flat ib-ndr network, with the number of rank groups the
unchanged algorithm split into and the engine that replayed it. The
issue's goal: the ring in under 10 s at P = 1,024 and under 60 s at 4,096.
"""
import time

import click

from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.sim import OPS, Topology, simulate


@click.command()
@click.option("--ranks", default="1024,4096", show_default=True)
@click.option("--bytes", "n_bytes", default=64 << 20, show_default=True)
def main(ranks, n_bytes):
    topo = Topology.flat(load_profile("ib-ndr").network())
    print("| algorithm | P | wall s | groups | engine | simulated ms |")
    print("|---|---|---|---|---|---|")
    for p in (int(r) for r in ranks.split(",")):
        for name in OPS["allreduce"]:
            t0 = time.perf_counter()
            res = simulate("allreduce", name, p, n_bytes, topo)
            wall = time.perf_counter() - t0
            print(f"| {name} | {p} | {wall:.2f} | {res.groups} | {res.engine} | {res.time_s * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
