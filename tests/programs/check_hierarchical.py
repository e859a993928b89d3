"""Run under ``mpiexec -n K``: the hierarchical all-reduce against MPI_Allreduce for every node size dividing K.

Integer-valued data, so every order of addition gives the same bits; prints ``CHECKED n`` on rank 0 and exits 1
on any mismatch (every rank ends: the abort hook).
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm.collectives.hierarchical import allreduce_hierarchical
from parallel_lm.runtime import install_abort_hook

install_abort_hook()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
checked = 0
for per_node in [d for d in range(1, p + 1) if p % d == 0]:
    for n in (0, 1, p - 1, 101, 300_007):
        for dtype in (np.float32, np.int64):
            x = np.random.default_rng(1000 * n + rank).integers(-8, 9, n).astype(dtype)
            want = x.copy()
            comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
            allreduce_hierarchical(x, comm, per_node)
            if not np.array_equal(x, want):
                raise AssertionError(f"rank {rank}: {per_node} per node, n={n}, {dtype.__name__}: differs from MPI")
            checked += 1
if p > 1:
    try:
        allreduce_hierarchical(np.zeros(4, np.float32), comm, p + 1)
    except ValueError as e:
        assert "multiple of" in str(e)
    else:
        raise AssertionError("a node size that does not divide the ranks was accepted")
if rank == 0:
    print(f"CHECKED {checked}")
