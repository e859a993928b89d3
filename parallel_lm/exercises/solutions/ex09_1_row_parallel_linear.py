"""Exercise 09.1 (lesson 09): a row-parallel linear layer.

y = x @ W.T with W of shape (out, k). Tensor parallelism cuts the k input
features over the ranks: rank r holds the columns ``x_shard`` (batch,
k_r) of x and ``w_shard`` (out, k_r) of W, where k_r can differ between
ranks and may be 0. Each rank's product is a partial sum of y; add the
partial sums over the ranks so that every rank holds the whole y.

The checker cuts k unevenly on 3 and 5 ranks and compares with one
process's x @ W.T.
"""
from mpi4py import MPI


def row_parallel_linear(x_shard, w_shard, comm):
    """Return y = x @ W.T (batch, out) on every rank, from this rank's columns of x and W."""
    y = x_shard @ w_shard.T
    comm.Allreduce(MPI.IN_PLACE, y, op=MPI.SUM)
    return y
