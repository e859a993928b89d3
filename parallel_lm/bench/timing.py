"""Timing loops in the OSU/nccl-tests habit: warm-up, barrier, MPI.Wtime, median of repetitions."""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI


def quiet_barrier(comm, poll_s: float = 1e-4) -> None:
    """A barrier that sleeps while it waits, so idle ranks leave the cores to busy ones.

    Oversubscribed MPICH ranks spin in a blocking barrier (MPI-NOTES.md).
    """
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def time_collective(comm, run, reset, warmup: int, iters: int) -> tuple[float, float]:
    """(median, min) seconds of ``run()`` across ``iters`` repetitions.

    ``reset()`` restores the input before every repetition, outside the timed
    part. One repetition's time is the slowest rank's (the collective is
    done when the last rank is), taken with an element-wise MAX over ranks.
    """
    for _ in range(warmup):
        reset()
        run()
    times = np.empty(iters)
    for i in range(iters):
        reset()
        comm.Barrier()
        t0 = MPI.Wtime()
        run()
        times[i] = MPI.Wtime() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return float(np.median(times)), float(times.min())
