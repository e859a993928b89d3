"""python -m parallel_lm.calibrate: measure this machine's alpha, beta and gamma into a profile.

    mpiexec -n 4 python -m parallel_lm.calibrate --out runs/profile-p4.json

Three measurements over a sweep of message sizes, each a median of
repetitions:
- ping-pong between ranks 0 and 1 (OSU style: half the round trip), the
  textbook latency/bandwidth of one link;
- exchange: every rank Sendrecv's with a partner at once, the step the
  collectives are built from, under the load of the rank count you run
  with (on 2 cores, 8 ranks get less bandwidth each than 2 do);
- local reduction (acc += x) on all ranks at once, for gamma.
Each is fitted by relative-weighted least squares, piecewise where the
protocol switch shows (``costmodel/calibration.py``). The profile's alpha
and beta are the exchange fit (its pieces by buffer size), because that
is what predicts the collectives; the ping-pong fit is stored beside it.
"""
from __future__ import annotations

import datetime
import json
import socket
import sys
from pathlib import Path

import click
import numpy as np

from .bench.metrics import sweep
from .sizes import format_size
from .bench.pingpong import exchange_s, half_round_trip_s, reduce_s
from .bench.timing import time_collective
from .comm import allreduce
from .costmodel.calibration import fit_gamma, fit_piecewise
from .services.metrics import write_atomic
from .runtime import main_guard, node_share, print0, size_option, world

GAMMA_MIN_BYTES = 64 << 10  # below this the add is a fixed Python call cost, not bytes


def _fit_summary(name: str, fit) -> str:
    parts = [f"[{format_size(int(p.min_bytes))}, {'inf' if p.max_bytes == float('inf') else format_size(int(p.max_bytes))}): "
             f"alpha {p.alpha_s * 1e6:.2f} us, beta {p.beta_s_per_byte * 1e12:.1f} ps/B ({1e-9 / p.beta_s_per_byte:.2f} GB/s)"
             if p.beta_s_per_byte else f"alpha {p.alpha_s * 1e6:.2f} us" for p in fit.pieces]
    med = fit.to_json()["median_abs_rel_residual"]
    return f"# {name}: " + "; ".join(parts) + f"; median |residual| {100 * med:.1f}%"


def ring_step_s(comm, warmup: int, iters: int) -> float:
    """The time of one step of a ring all-reduce of one float32 per rank: the latency an algorithm really pays.

    That tiny all-reduce is 2(p-1) steps of almost no data, so each step is
    MPI's latency plus Python's bookkeeping around each message (slicing,
    the add, the loop) plus waiting for ranks to be scheduled when they
    outnumber the cores.
    """
    p = comm.Get_size()
    buf = np.ones(p, dtype=np.float32)
    t, _ = time_collective(comm, lambda: allreduce(buf, comm, "ring"), lambda: buf.fill(1), warmup, iters)
    return t / (2 * (p - 1))


def software_overhead_s(comm, ex_fit, warmup: int, iters: int) -> tuple[float, float]:
    """(overhead, step): one ring step (``ring_step_s``) beyond the exchange fit's latency: LogP's o, which
    profiles add to alpha."""
    step = ring_step_s(comm, warmup, iters)
    return max(0.0, step - ex_fit.predict_s(4)), step


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Profile JSON to write (use it with --profile in simulate, predict, plot).")
@click.option("--name", default="", help="Profile name (default: HOST-pN).")
@click.option("--min-bytes", "-b", default="8", callback=size_option, help="Smallest message.")
@click.option("--max-bytes", "-e", default="64M", callback=size_option, help="Largest message.")
@click.option("--factor", "-f", default=4.0, type=float, help="Size multiplier between points.")
@click.option("--iters", "-n", default=20, type=click.IntRange(min=3), help="Timed repetitions per point (median).")
@click.option("--warmup", "-w", default=3, type=click.IntRange(min=0), help="Untimed repetitions first.")
def main(out_path, name, min_bytes, max_bytes, factor, iters, warmup):
    """Fit alpha, beta (ping-pong and pairwise exchange) and gamma on this machine; run under mpiexec -n P >= 2."""
    comm = world()
    p = comm.Get_size()
    if p < 2:
        raise click.UsageError("calibration measures messages between ranks: run it with at least 2, e.g. "
                               "mpiexec -n 2 python -m parallel_lm.calibrate --out profile.json")
    try:
        sizes = sweep(min_bytes, max_bytes, factor)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    host = socket.gethostname()
    on_node, cores = node_share(comm)
    print0(f"# parallel_lm.calibrate: {p} ranks on {host}, {len(sizes)} sizes, median of {iters}; {on_node} ranks on "
           f"{cores} cores here ({on_node / cores:.2g} per core: the profile holds for this many ranks per core)")
    print0(f"# {'bytes':>10} {'pingpong_us':>12} {'exchange_us':>12} {'reduce_us':>10}")
    pp, ex, red = [], [], []
    for n in sizes:
        pp.append(half_round_trip_s(comm, n, warmup, iters))
        ex.append(exchange_s(comm, n, warmup, iters))
        red.append(reduce_s(comm, n, warmup, iters) if n >= GAMMA_MIN_BYTES else None)
        r = f"{red[-1] * 1e6:10.1f}" if red[-1] is not None else f"{'-':>10}"
        print0(f"  {n:>10} {pp[-1] * 1e6:12.2f} {ex[-1] * 1e6:12.2f} {r}")
        sys.stdout.flush()
    pp_fit, ex_fit = fit_piecewise(sizes, pp), fit_piecewise(sizes, ex)
    overhead, step = software_overhead_s(comm, ex_fit, warmup, iters)
    g_sizes = [n for n, t in zip(sizes, red) if t is not None]
    g_times = [t for t in red if t is not None]
    gamma_fit = fit_piecewise(g_sizes, g_times, min_points=2) if len(g_sizes) >= 4 else None
    gamma = gamma_fit.pieces[-1].beta_s_per_byte if gamma_fit else fit_gamma(g_sizes, g_times) if len(g_sizes) >= 2 else 0.0
    print0(_fit_summary("ping-pong", pp_fit))
    print0(_fit_summary("exchange ", ex_fit))
    if gamma_fit:
        print0(_fit_summary("reduce   ", gamma_fit).replace("beta", "gamma"))
    print0(f"# software overhead: a step of a tiny ring all-reduce takes {step * 1e6:.2f} us, "
           f"{overhead * 1e6:.2f} us more than the exchange fit's latency")
    if comm.Get_rank() == 0:
        large = ex_fit.pieces[-1]
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        how = f"python -m parallel_lm.calibrate under mpiexec -n {p} on {host}, {when}"
        profile = {
            "name": name or f"{host}-p{p}",
            "description": f"measured on {host} with {p} ranks",
            "ranks": p,
            "local_ranks": on_node, "cores": cores,
            "alpha_s": large.alpha_s, "beta_s_per_byte": large.beta_s_per_byte, "gamma_s_per_byte": gamma,
            "overhead_s": overhead,
            "pieces": ex_fit.to_json()["pieces"],
            "gamma_pieces": gamma_fit.to_json()["pieces"] if gamma_fit else [],
            "sources": {
                "alpha_s": f"exchange fit (largest-message piece), {how}",
                "beta_s_per_byte": f"exchange fit (largest-message piece), {how}",
                "gamma_s_per_byte": f"slope of float32 acc += x times (largest-buffer piece) for >= "
                                    f"{format_size(GAMMA_MIN_BYTES)}, {how}",
                "overhead_s": f"per-step time of the explicit ring all-reduce on {4 * p} bytes minus the exchange "
                              f"fit's latency at that size, {how}",
            },
            "fits": {"exchange": ex_fit.to_json(), "pingpong": pp_fit.to_json(),
                     "reduce": gamma_fit.to_json() if gamma_fit else None},
        }
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_path, lambda tmp: tmp.write_text(json.dumps(profile, indent=1) + "\n"))
    print0(f"# wrote {out_path}")


if __name__ == "__main__":
    main_guard(main)
