"""python -m parallel_lm.simulate: one collective on a simulated cluster, beside its formula.

    python -m parallel_lm.simulate --algorithm ring --ranks 1024 --bytes 64M --profile ib-ndr
    python -m parallel_lm.simulate -a all -r 8,64,1024 -s 4K,64M --profile dgx-h100-ndr --topology switch

Runs the unchanged algorithm from ``comm/collectives`` on P virtual ranks
(``parallel_lm.sim``) and prints the simulated time, the closed-form
formula's time and their ratio. On a flat network the ratio is 1; with
nodes (hierarchical) or shared node ports (switch) it shows what the
formula, which sees one network, misses. No MPI needed.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import click

from . import environment
from .sizes import format_size, parse_size
from .costmodel.profiles import PROFILE_NAMES, load_profile
from .services.metrics import write_atomic
from .runtime import comma_list, rank_count
from .sim import KINDS, OPS, simulate, topology_from_profile


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--op", type=click.Choice(list(OPS)), default="allreduce", help="Collective to simulate.")
@click.option("--algorithm", "-a", default="ring", help="Algorithm name for --op, a comma list, or 'all'.")
@click.option("--ranks", "-r", default="1024", help="Virtual ranks; a comma list runs each.")
@click.option("--bytes", "-s", "sizes", default="64M", help="Buffer size(s) in bytes (K, M, G suffixes), comma list allowed.")
@click.option("--profile", "-p", default="ib-ndr",
              help=f"Network profile: {', '.join(PROFILE_NAMES)}, a JSON file, or alpha=S,beta=S_PER_B[,gamma=..].")
@click.option("--topology", "-t", type=click.Choice(KINDS), default=None,
              help="flat, hierarchical (nodes) or switch (nodes sharing their ports); default: the profile's.")
@click.option("--ranks-per-node", type=click.IntRange(min=1), default=None, help="Override the profile's node size.")
@click.option("--rails", type=click.IntRange(min=1), default=None,
              help="Switch ports (NICs) per node with --topology switch; default: the profile's (8 on the DGX profiles).")
@click.option("--dtype", default="float32", type=click.Choice(["float16", "float32", "float64", "int32", "int64"]),
              help="Element type (sets the element count of --bytes and the cost of the additions).")
@click.option("--data", is_flag=True, help="Move and add real data (one thread per rank, up to 512) and check the sums.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write one record per run.")
def main(op, algorithm, ranks, sizes, profile, topology, ranks_per_node, rails, dtype, data, json_path):
    """Simulate a collective on P virtual ranks and compare with the closed-form formula."""
    try:
        prof = load_profile(profile)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    names = list(OPS[op]) if algorithm.strip() == "all" else comma_list(algorithm, str, "algorithm")
    bad = [n for n in names if n not in OPS[op]]
    if bad:
        raise click.BadParameter(f"unknown {op} algorithm {', '.join(bad)}; valid: {', '.join(OPS[op])} or 'all'",
                                 param_hint="--algorithm")
    rank_list = comma_list(ranks, rank_count, "ranks")
    size_list = comma_list(sizes, parse_size, "bytes")
    records = []
    print(f"# {op} on profile {prof.name} ({prof.description or 'no description'}), mode {'data' if data else 'timing-only'}")
    print(f"{'algorithm':>18} {'ranks':>6} {'bytes':>8} {'topology':>40} {'sim_us':>12} {'formula_us':>12} "
          f"{'sim/formula':>11} {'groups':>6} {'engine':>8} {'wall_s':>7}")
    for p in rank_list:
        for n in size_list:
            try:
                topo = topology_from_profile(prof, topology or "", ranks_per_node, message_bytes=n)
                if rails:
                    topo = replace(topo, rails=rails)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            for name in names:
                t0 = time.perf_counter()
                try:
                    res = simulate(op, name, p, n, topo, dtype=dtype, data=data)
                except ValueError as e:
                    raise click.UsageError(str(e)) from None
                wall = time.perf_counter() - t0
                formula = res.formula_s(topo)
                ratio = res.time_s / formula if formula else float("nan")
                print(f"{name:>18} {p:>6} {format_size(n):>8} {topo.describe(p):>40} {res.time_s * 1e6:>12.2f} "
                      f"{formula * 1e6:>12.2f} {ratio:>11.4f} {res.groups:>6} {res.engine:>8} {wall:>7.2f}")
                sys.stdout.flush()
                if data and res.max_abs_error:
                    raise click.ClickException(f"{name} on {p} ranks gave wrong sums (max error {res.max_abs_error})")
                records.append(dict(op=op, algorithm=name, ranks=p, size_bytes=n, profile=prof.name,
                                    topology=topo.kind, ranks_per_node=topo.ranks_per_node, sim_s=res.time_s,
                                    formula_s=formula, messages=res.messages, groups=res.groups,
                                    engine=res.engine, wall_s=wall, max_abs_error=res.max_abs_error))
    if json_path:
        write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps({"records": records}, indent=1) + "\n"))
        print(f"# wrote {json_path}")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
