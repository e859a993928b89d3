"""Lesson 04: every all-reduce algorithm, measured side by side.

    mpiexec -n 4 python lessons/04_comparing_algorithms.py

Which algorithm wins depends on the message size. For a short message
the alpha (latency) term dominates, so the fewest rounds win: recursive
doubling needs lg p, the ring 2(p-1). For a long one the beta (bandwidth)
term dominates, so the fewest bytes per rank win: ring and Rabenseifner
send 2(p-1)/p.n, tree and recursive doubling lg p.n or more, naive
2(p-1).n through one rank. MPI libraries switch algorithms by size for
exactly this reason (MPICH: recursive doubling below 2 KiB, Rabenseifner
above).

This lesson times all of them, and the library's MPI_Allreduce, at three
sizes in the same run (warm-up, barrier, median, time of the slowest rank,
as ``python -m parallel_lm.bench`` does), prints time and bus bandwidth
(nccl-tests' busbw = bytes/time x 2(p-1)/p, comparable across p), marks
the fastest, and checks every result against MPI_Allreduce.

On a 2-core laptop several ranks share a core, so absolute numbers are
small and noisy; the ranking by size is the lesson. For the full sweep:
``mpiexec -n 4 python -m parallel_lm.bench -b 4K -e 64M``.
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.bench.metrics import busbw_GBps
from parallel_lm.sizes import format_size
from parallel_lm.bench.timing import time_collective
from parallel_lm.comm import ALGORITHMS, allreduce
from parallel_lm.runtime import check, start_script, print0

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
sizes = [4 << 10, 256 << 10, 16 << 20]

print0(f"all-reduce of float32 on {p} ranks, median of 7 runs\n")
print0(f"{'size':>6} " + "".join(f"{name:>20}" for name in ALGORITHMS) + "    fastest")
for size in sizes:
    src = np.random.default_rng(rank).integers(-3, 4, size // 4).astype(np.float32)  # exact sums in any order
    expected = src.copy()
    comm.Allreduce(MPI.IN_PLACE, expected, op=MPI.SUM)
    buf = src.copy()
    cells, times = [], {}
    for name in ALGORITHMS:
        median_s, _ = time_collective(comm, lambda: allreduce(buf, comm, algorithm=name),
                                      lambda: np.copyto(buf, src), warmup=2, iters=7)
        np.copyto(buf, src)
        allreduce(buf, comm, algorithm=name)
        check(np.array_equal(buf, expected), f"{name} at {size} bytes differs from MPI_Allreduce")
        times[name] = median_s
        cells.append(f"{median_s * 1e6:>9.0f}us {busbw_GBps('allreduce', size, median_s, p):>5.2f}GB/s")
    print0(f"{format_size(size):>6} " + "".join(f"{c:>20}" for c in cells) + f"    {min(times, key=times.get)}")

print0("\nEvery algorithm's result equals MPI_Allreduce at every size.")
print0("lesson 04 OK")

# Exercises
# 1. Run with -n 2, 4 and 8. At which size does the ring overtake recursive doubling,
#    and does that crossover move with p as the formulas in lesson 03 predict?
# 2. Run with -n 3 and -n 5. Recursive doubling and Rabenseifner fold the extra ranks
#    in and out (collectives/fold.py). How much does that cost at 16 MiB?
# 3. Add 64 MiB to `sizes`. The library slows down sharply there (docs/mpi-notes.md, "Speed").
#    Does raising glibc's mmap threshold (MALLOC_MMAP_THRESHOLD_=1073741824 in the
#    environment) change it on your machine? It did not on ours.
# Graded: python -m parallel_lm.exercises start 04.1, then check 04.1 (docs/course.md)
