"""Pairwise-exchange all-to-all: p - 1 steps, on step s send to rank + s and receive from rank - s.

Algorithm: ``sendbuf`` holds p blocks, block j for rank j; ``recvbuf``
gets p blocks, block i from rank i. A rank first copies its own block,
then on step s = 1 .. p - 1 sends block r + s to rank r + s and receives
block r - s from rank r - s (mod p) in one Sendrecv. Every rank sends
and receives exactly once per step, so no link carries two messages at
once and any p works (MPICH uses r XOR s when p is a power of two; the
shifted ring here is the same schedule for every p).

The variable-count form (``all_to_allv_pairwise``) is the same schedule
with blocks of ``sendcounts[j]`` and ``recvcounts[i]`` elements, laid
out one after another (MPI_Alltoallv with displacements the running sums).

Restrictions: none (any p, empty blocks, any dtype).

Cost (n bytes sent per rank, blocks of n/p):
  all_to_all_pairwise = (p-1).alpha + (p-1)/p.n.beta

Wins: long blocks. Each byte crosses the network once, the least any
all-to-all can do; the p - 1 latency terms make it lose to Bruck when
blocks are short and p is large. Reference: Thakur, Rabenseifner & Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA
2005, section 3.5 (MPICH's choice for long messages).
"""
from __future__ import annotations

import numpy as np

from .local import copy_into

TAG = 21


def block_offsets(counts) -> np.ndarray:
    """Start of each block (and the end) when blocks of ``counts`` elements lie one after another."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])


def all_to_allv_pairwise(sendbuf, sendcounts, recvbuf, recvcounts, comm):
    rank, p = comm.Get_rank(), comm.Get_size()
    send, recv = block_offsets(sendcounts), block_offsets(recvcounts)
    copy_into(recvbuf[recv[rank]:recv[rank + 1]], sendbuf[send[rank]:send[rank + 1]])
    for step in range(1, p):
        dest, source = (rank + step) % p, (rank - step) % p
        comm.Sendrecv(sendbuf[send[dest]:send[dest + 1]], dest=dest, sendtag=TAG,
                      recvbuf=recvbuf[recv[source]:recv[source + 1]], source=source, recvtag=TAG)
    return recvbuf


def all_to_all_pairwise(sendbuf, recvbuf, comm):
    counts = [sendbuf.size // comm.Get_size()] * comm.Get_size()
    return all_to_allv_pairwise(sendbuf, counts, recvbuf, counts, comm)
