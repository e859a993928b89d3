"""Lesson 02: naive vs tree reduction — the root bottleneck and the log p cure.

    mpiexec -n 8 python lessons/02_naive_and_tree_reduction.py

All-reduce: every rank holds a vector; afterwards every rank holds the sum
of all of them. The first idea (``parallel_lm/comm/collectives/naive.py``)
is a star: everyone sends to rank 0, rank 0 adds, rank 0 sends the sum
back to everyone. Rank 0 handles 2(p-1) messages of the full size, one
after another:

    naive: 2(p-1).alpha + 2(p-1).n.beta + (p-1).n.gamma

A binomial tree (``tree.py``) lets the other ranks help. In round k every
rank whose bit k is set sends its partial sum to the rank 2^k below and
drops out; after ceil(lg p) rounds rank 0 holds the total, and a binomial
broadcast sends it back down the same tree:

    tree:  2.ceil(lg p).alpha + 2.ceil(lg p).n.beta + ceil(lg p).n.gamma

For p = 8 that is 6 messages through rank 0 instead of 14. This lesson
counts the messages each rank really sends and receives (a CountingComm
wraps the communicator), checks them against the formulas, times both,
and checks both sums against the MPI library's MPI_Allreduce.
"""
import math

import numpy as np
from mpi4py import MPI

from parallel_lm.comm.collectives import allreduce_naive, allreduce_tree
from parallel_lm.comm.trace import CountingComm
from parallel_lm.runtime import check, start_script, print0

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
n = 1 << 18  # 262144 float32 = 1 MiB
x = np.random.default_rng(rank).integers(-3, 4, n).astype(np.float32)  # small integers: every order sums exactly
expected = x.copy()
comm.Allreduce(MPI.IN_PLACE, expected, op=MPI.SUM)

lg = math.ceil(math.log2(p)) if p > 1 else 0
print0(f"all-reduce of {n * 4 >> 20} MiB on {p} ranks\n")
print0(f"{'algorithm':>10} {'root msgs':>10} {'formula':>8} {'max msgs/rank':>14} {'time_ms':>8}")
for name, fn, root_formula in [("naive", allreduce_naive, 2 * (p - 1)), ("tree", allreduce_tree, 2 * lg)]:
    counted = CountingComm(comm)
    buf = x.copy()
    comm.Barrier()
    t0 = MPI.Wtime()
    fn(buf, counted)
    elapsed = comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    mine = counted.sent + counted.received
    busiest = comm.allreduce(mine, op=MPI.MAX)
    root_msgs = comm.bcast(mine, root=0)
    print0(f"{name:>10} {root_msgs:>10} {root_formula:>8} {busiest:>14} {elapsed * 1e3:>8.2f}")
    check(np.array_equal(buf, expected), f"{name}: sum differs from MPI_Allreduce on rank {rank}")
    check(root_msgs == root_formula, f"{name}: rank 0 handled {root_msgs} messages, formula says {root_formula}")

print0("\nBoth sums equal MPI_Allreduce. The tree's root handles log p messages, not p.")
print0("lesson 02 OK")

# Exercises
# 1. Run with -n 2, 3, 5, 8. For which p do naive and tree send the same number of
#    messages through rank 0? Check with the formulas.
# 2. In tree.py every round still sends the *whole* vector. How many bytes cross
#    rank 0's link in total for n bytes? Compare with the ring in lesson 03.
# 3. Random floats (not small integers) make naive and tree differ from MPI in the
#    last bits. Change the data and find out why exact equality fails, but every
#    rank still agrees with every other rank.
# Graded: python -m parallel_lm.exercises start 02.1, then check 02.1 (docs/course.md)
