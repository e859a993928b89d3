"""Timing loops in the OSU/nccl-tests habit: warm-up, barrier, MPI.Wtime, median of repetitions."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI


def time_interleaved(comm, runs: dict, reset, warmup: int, iters: int) -> dict[str, tuple[float, float]]:
    """{name: (median, min) seconds} for each ``runs[name]()``, repetitions interleaved.

    Repetition i runs every algorithm once, in turn, so a slow spell of a
    noisy machine hits all of them alike and their ratios stay honest.
    ``reset()`` restores the input before every run, outside the timed
    part. A run's time is the slowest rank's (the collective is done when
    the last rank is), taken with an element-wise MAX over ranks.
    """
    for _ in range(warmup):
        for run in runs.values():
            reset()
            run()
    times = np.empty((len(runs), iters))
    for i in range(iters):
        for j, run in enumerate(runs.values()):
            reset()
            comm.Barrier()
            t0 = MPI.Wtime()
            run()
            times[j, i] = MPI.Wtime() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return {name: (float(np.median(row)), float(row.min())) for name, row in zip(runs, times)}


def time_collective(comm, run, reset, warmup: int, iters: int) -> tuple[float, float]:
    """(median, min) seconds of one ``run()`` (see ``time_interleaved``)."""
    return time_interleaved(comm, {"run": run}, reset, warmup, iters)["run"]
