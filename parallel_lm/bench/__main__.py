"""python -m parallel_lm.bench: time collectives side by side with the MPI library, nccl-tests style.

    mpiexec -n 4 python -m parallel_lm.bench -b 4K -e 64M -f 4
    mpiexec -n 4 python -m parallel_lm.bench --algorithms ring,mpi,torch_gloo --json bench.json
    mpiexec -n 2 python -m parallel_lm.bench --op pingpong -b 1 -e 4M
    mpiexec -n 4 python -m parallel_lm.bench --op all_to_all -b 64 -e 16M
    mpiexec -n 4 python -m parallel_lm.bench -a ring,hierarchical --ranks-per-node 2 --netem gpu-nodes-10g

Each row: buffer size, element count, dtype, algorithm, median time, algbw and
busbw (nccl-tests definitions, see metrics.py), busbw relative to the library's
(``vs_mpi`` = library time / time) and the number of wrong elements in the result (``errors``).
"""
from __future__ import annotations

import json
import os
import sys

import click
import numpy as np
from mpi4py import MPI

from ..comm.buffers import SUPPORTED_DTYPES
from ..comm import settings as comm_settings
from ..comm.settings import RAILS, RANKS_PER_NODE
from ..runtime import emulated, main_guard, netem_inside, netem_network, print0, size_option, world
from ..sizes import format_size
from .metrics import OPS, algbw_GBps, busbw_GBps, sweep
from .pingpong import half_round_trip_s
from .runners import REGISTRIES, TORCH_GLOO, count_errors, make_input, runner
from .timing import time_interleaved

HEADER = f"{'size':>8} {'count':>10} {'type':>8} {'algorithm':>18} {'time_us':>11} {'algbw_GBps':>10} {'busbw_GBps':>10} {'vs_mpi':>7} {'errors':>6}"


def _library() -> str:
    """'MPICH Version: 5.0.2', say: the first line of MPI_Get_library_version, spaces squeezed."""
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def _names(text: str, valid: list[str], what: str) -> list[str]:
    """Comma-separated names; 'all' stands for every valid name but torch_gloo (which imports torch)."""
    names = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        for name in ([v for v in valid if v != TORCH_GLOO] if token == "all" else [token]):
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise click.BadParameter(f"unknown {what} {', '.join(unknown) or '(none given)'}; valid: {', '.join(valid)} or 'all'")
    return names


def _row(r: dict) -> str:
    vs = f"{r['vs_mpi']:.2f}" if r.get("vs_mpi") is not None else "-"
    return (f"{format_size(r['size_bytes']):>8} {r['count']:>10} {r['dtype']:>8} {r['algorithm']:>18} "
            f"{r['time_us']:>11.1f} {r['algbw_GBps']:>10.3f} {r['busbw_GBps']:>10.3f} {vs:>7} {r['errors']:>6}")


def _progress(total: int, comm):
    """A progress bar on rank 0's terminal (stderr); nothing when output is redirected."""
    from tqdm import tqdm
    return tqdm(total=total, unit="point", file=sys.stderr, leave=False,
                disable=comm.Get_rank() != 0 or not sys.stderr.isatty())


def _record(op, algorithm, dtype_name, size_bytes, count, p, t_med, t_min, errors) -> dict:
    return dict(op=op, algorithm=algorithm, dtype=dtype_name, size_bytes=size_bytes, count=count, ranks=p,
                time_us=t_med * 1e6, time_us_min=t_min * 1e6, algbw_GBps=algbw_GBps(size_bytes, t_med),
                busbw_GBps=busbw_GBps(op, size_bytes, t_med, p), errors=errors, vs_mpi=None)


def _collective_point(comm, op, names, size, dtype, warmup, iters) -> list[dict]:
    """Time every algorithm at one (size, dtype), interleaved; then count each one's wrong elements."""
    count = size // dtype.itemsize
    if op == "all_to_all":  # one whole block per rank
        count -= count % comm.Get_size()
    src = make_input(count, dtype, comm.Get_rank())
    buf = src.copy()
    out = np.empty_like(buf) if op == "all_to_all" else buf
    runs = {name: runner(op, name, buf, comm, out) for name in names}
    times = time_interleaved(comm, runs, lambda: np.copyto(buf, src), warmup, iters)
    records = []
    for name, run in runs.items():
        np.copyto(buf, src)
        if out is not buf:
            out[...] = 0  # a run that writes nothing cannot pass on the previous algorithm's result
        run()
        errors = comm.allreduce(count_errors(op, out, comm), op=MPI.MAX)
        records.append(_record(op, name, dtype.name, count * dtype.itemsize, count, comm.Get_size(), *times[name], errors))
    library = next((r for r in records if r["algorithm"] == "mpi"), None)
    for r in records:  # = busbw / library busbw, but also defined at p = 1, where busbw is 0
        r["vs_mpi"] = library["time_us"] / r["time_us"] if library else None
    return records


def _pingpong_point(comm, size, warmup, iters) -> list[dict]:
    t = half_round_trip_s(comm, size, warmup, iters)
    return [_record("pingpong", "mpi", "uint8", size, size, comm.Get_size(), t, t, 0)]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--op", type=click.Choice(OPS), default="allreduce", help="Collective to time; pingpong times ranks 0<->1.")
@click.option("--algorithms", "-a", default="all",
              help="Comma-separated algorithm names for --op, or 'all'. allreduce also takes torch_gloo "
                   "(torch.distributed gloo), which 'all' leaves out because it imports torch.")
@click.option("--dtypes", "-d", default="float32", help=f"Comma-separated: {', '.join(str(d) for d in SUPPORTED_DTYPES)}.")
@click.option("--min-bytes", "-b", default="4K", callback=size_option, help="Smallest buffer (bytes; K, M, G suffixes).")
@click.option("--max-bytes", "-e", default="64M", callback=size_option, help="Largest buffer.")
@click.option("--factor", "-f", default=4.0, type=float, help="Size multiplier between sweep points.")
@click.option("--iters", "-n", default=20, type=click.IntRange(min=1), help="Timed repetitions per point (median reported).")
@click.option("--warmup", "-w", default=5, type=click.IntRange(min=0), help="Untimed repetitions first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the records to this JSON file.")
@click.option("--netem", default=None, metavar="PROFILE",
              help="Delay every message of the explicit algorithms like this network (a profile name, file, or "
                   "alpha=S,beta=S_PER_B[,inter_alpha=S,inter_beta=S_PER_B,ranks_per_node=L]). A two-level profile "
                   "emulates nodes of its L ranks (or --ranks-per-node) when they divide the ranks into several "
                   "nodes: its intra-node level inside one, its inter-node level between; otherwise every message "
                   "is inter-node. 'mpi' is not delayed.")
@click.option("--ranks-per-node", type=click.IntRange(min=1), default=None,
              help=f"Emulate nodes of this many consecutive ranks (sets {RANKS_PER_NODE}) for the hierarchical "
                   "all-reduce and a two-level --netem; default: the real nodes (MPI's shared-memory split).")
@click.option("--rails", type=click.IntRange(min=1), default=None,
              help=f"Ranks per node that run a ring between nodes in the hierarchical all-reduce (sets {RAILS}); "
                   "must divide the ranks per node. Default: all of them.")
def main(op, algorithms, dtypes, min_bytes, max_bytes, factor, iters, warmup, json_path, netem, ranks_per_node, rails):
    """Time collective algorithms side by side with the MPI library (run under mpiexec)."""
    comm = world()
    p, rank = comm.Get_size(), comm.Get_rank()
    try:
        netem_net = netem_network(netem)
        inside, profile_nodes = netem_inside(netem)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if not ranks_per_node and profile_nodes and p % profile_nodes == 0 and profile_nodes < p:
        ranks_per_node = profile_nodes
    if not ranks_per_node:
        inside = None
    if ranks_per_node:
        if p % ranks_per_node:
            raise click.UsageError(f"--ranks-per-node {ranks_per_node} does not divide the {p} ranks: "
                                   f"run a multiple of {ranks_per_node} ranks, or pick a divisor of {p}")
        comm_settings.configure(ranks_per_node=ranks_per_node)
    if rails:
        per_node = comm_settings.current().ranks_per_node or p
        if per_node % rails:
            raise click.UsageError(f"--rails {rails} must divide the {per_node} ranks per node")
        comm_settings.configure(rails=rails)
    names = _names(algorithms, REGISTRIES[op], f"{op} algorithm")
    names.sort(key=lambda n: n != "mpi")  # the baseline heads each group of rows
    dtype_list = [np.dtype(d) for d in _names(dtypes, [str(d) for d in SUPPORTED_DTYPES], "dtype")]
    try:
        sizes = sweep(min_bytes, max_bytes, factor)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if op == "pingpong" and p < 2:
        raise click.UsageError("--op pingpong needs at least 2 ranks: mpiexec -n 2 python -m parallel_lm.bench --op pingpong")

    print0(f"# parallel_lm.bench: op {op}, {p} ranks, {_library()}, "
           f"warmup {warmup}, iters {iters} (median of the slowest rank's time; algorithms interleaved)")
    if netem_net:
        bandwidth = f"{1e-9 / netem_net.beta_s_per_byte:.3f} GB/s" if netem_net.beta_s_per_byte else "infinite bandwidth"
        where = f"between emulated nodes of {ranks_per_node} ranks" if inside else "of the explicit algorithms"
        print0(f"# netem {netem}: every message {where} takes >= {netem_net.alpha_s * 1e6:.2f} us "
               f"+ bytes / {bandwidth}")
        if inside:
            print0(f"# netem {netem}: inside a node >= {inside.alpha_s * 1e6:.2f} us + bytes / "
                   f"{1e-9 / inside.beta_s_per_byte if inside.beta_s_per_byte else float('inf'):.3f} GB/s")
    print0("#" + HEADER[1:])
    records = []
    points = [(s, d) for s in sizes for d in (dtype_list if op != "pingpong" else dtype_list[:1])]
    with _progress(len(points), comm) as bar:
        for size, dtype in points:
            for rec in (_pingpong_point(comm, size, warmup, iters) if op == "pingpong"
                        else _collective_point(emulated(comm, netem_net, inside, ranks_per_node or 0), op, names, size, dtype,
                                              warmup, iters)):
                records.append(rec)
                if rank == 0:
                    bar.write(_row(rec), file=sys.stdout)
            bar.update()
    bad = sum(r["errors"] for r in records)
    print0(f"# {len(records)} points, {bad} wrong elements in all")
    if json_path and rank == 0:
        meta = dict(op=op, ranks=p, iters=iters, warmup=warmup, mpi_library=_library(),
                    command=" ".join(["python -m parallel_lm.bench"] + sys.argv[1:]))
        if netem_net:
            meta["netem"] = {"profile": netem, "alpha_s": netem_net.alpha_s, "beta_s_per_byte": netem_net.beta_s_per_byte}
            if inside:
                meta["netem"].update(ranks_per_node=ranks_per_node, inside_alpha_s=inside.alpha_s,
                                     inside_beta_s_per_byte=inside.beta_s_per_byte)
        if ranks_per_node or rails:
            meta["nodes"] = {"ranks_per_node": ranks_per_node, "rails": rails}
        tmp = f"{json_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1)
        os.replace(tmp, json_path)
        print0(f"# wrote {json_path}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main_guard(main)
