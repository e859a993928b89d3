"""OSU-style ping-pong between ranks 0 and 1: half the round trip per message size.

Its time vs size is the alpha-beta line the cost model is calibrated from
(alpha = intercept, beta = slope). Other ranks wait without spinning.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from .timing import quiet_barrier

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
