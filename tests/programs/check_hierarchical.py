"""Run under ``mpiexec -n K``: the hierarchical all-reduce against MPI_Allreduce for every node size
dividing K and every rail count dividing the node size; then the registry's "hierarchical" on the
nodes of comm/nodes.py (PARALLEL_LM_RANKS_PER_NODE, or the shared-memory split).

Integer-valued data, so every order of addition gives the same bits; prints ``CHECKED n`` on rank 0 and exits 1
on any mismatch (every rank ends: the abort hook).
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm import allreduce
from parallel_lm.comm.collectives.hierarchical import allreduce_hierarchical
from parallel_lm.comm.nodes import ranks_per_node
from parallel_lm.runtime import install_abort_hook

install_abort_hook()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
checked = 0


def check(n, dtype, run, what):
    global checked
    x = np.random.default_rng(1000 * n + rank).integers(-8, 9, n).astype(dtype)
    want = x.copy()
    comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
    run(x)
    if not np.array_equal(x, want):
        raise AssertionError(f"rank {rank}: {what}, n={n}, {dtype.__name__}: differs from MPI")
    checked += 1


divisors = lambda m: [d for d in range(1, m + 1) if m % d == 0]
for per_node in divisors(p):
    for rails in divisors(per_node):
        for n in (0, 1, p - 1, 101, 300_007):
            for dtype in (np.float32, np.int64):
                check(n, dtype, lambda x: allreduce_hierarchical(x, comm, per_node, rails),
                      f"{per_node} per node, {rails} rails")
per_node = ranks_per_node(comm)
for n in (5, 100_003):
    check(n, np.float32, lambda x: allreduce(x, comm, algorithm="hierarchical"), f"registry, {per_node} per node")
if p > 1:
    try:
        allreduce_hierarchical(np.zeros(4, np.float32), comm, p + 1)
    except ValueError as e:
        assert "multiple of" in str(e)
    else:
        raise AssertionError("a node size that does not divide the ranks was accepted")
if rank == 0:
    print(f"CHECKED {checked} NODES OF {per_node}")
