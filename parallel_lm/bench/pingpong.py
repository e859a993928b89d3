"""OSU-style ping-pong between ranks 0 and 1: half the round trip per message size.

Its time vs size is the alpha-beta line the cost model is calibrated from
(alpha = intercept, beta = slope). Other ranks wait without spinning.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..runtime import quiet_barrier

TAG = 21


def half_round_trip_s(comm, n_bytes: int, warmup: int, iters: int) -> float:
    """Median over ``iters`` of one round trip / 2 between ranks 0 and 1."""
    rank = comm.Get_rank()
    buf = np.zeros(n_bytes, dtype=np.uint8)
    times = np.empty(iters)
    for i in range(-warmup, iters):
        if rank > 1:
            continue
        if rank == 0:
            t0 = MPI.Wtime()
            comm.Send(buf, dest=1, tag=TAG)
            comm.Recv(buf, source=1, tag=TAG)
            if i >= 0:
                times[i] = (MPI.Wtime() - t0) / 2
        else:
            comm.Recv(buf, source=0, tag=TAG)
            comm.Send(buf, dest=0, tag=TAG)
    quiet_barrier(comm)
    return float(comm.bcast(np.median(times) if rank == 0 else None, root=0))


def exchange_s(comm, n_bytes: int, warmup: int, iters: int) -> float:
    """Median time of one Sendrecv of ``n_bytes`` each way, every rank paired with rank ^ 1 at once.

    This is the step the collectives repeat (a ring or halving round is
    every rank exchanging with a partner simultaneously), measured under
    the same load: with p ranks on the machine, p/2 pairs run together.
    An odd last rank sits out. Slowest rank per repetition, as in
    ``timing.time_interleaved``.
    """
    rank, p = comm.Get_rank(), comm.Get_size()
    partner = rank ^ 1
    out, into = np.ones(n_bytes, dtype=np.uint8), np.empty(n_bytes, dtype=np.uint8)
    times = np.zeros(iters)
    for i in range(-warmup, iters):
        comm.Barrier()
        t0 = MPI.Wtime()
        if partner < p:
            comm.Sendrecv(out, dest=partner, sendtag=TAG, recvbuf=into, source=partner, recvtag=TAG)
        if i >= 0:
            times[i] = MPI.Wtime() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return float(np.median(times))


def reduce_s(comm, n_bytes: int, warmup: int, iters: int) -> float:
    """Median time of ``acc += incoming`` on ``n_bytes`` of float32, all ranks at once (the gamma term)."""
    count = max(1, n_bytes // 4)
    acc, incoming = np.zeros(count, dtype=np.float32), np.ones(count, dtype=np.float32)
    times = np.zeros(iters)
    for i in range(-warmup, iters):
        comm.Barrier()
        t0 = MPI.Wtime()
        np.add(acc, incoming, out=acc)
        if i >= 0:
            times[i] = MPI.Wtime() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return float(np.median(times))
