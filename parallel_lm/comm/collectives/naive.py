"""Naive all-reduce: everyone sends to the root, the root sums and sends back.

Algorithm: ranks 1..p-1 send their whole buffer to rank 0; rank 0 adds
them in rank order (so the rounding is fixed) and sends the sum to every
rank, one after another.

Restrictions: none (any p, any n).

Cost = 2(p-1).alpha + 2(p-1).n.beta + (p-1).n.gamma
(n in bytes). Every byte passes through the root's one link twice per
other rank, so time grows linearly with p: the baseline the other
algorithms are measured against, and the shape of a parameter server.

Wins: never for p > 2; it is here because it is the first thing one writes
and the clearest picture of the root bottleneck.
"""
from __future__ import annotations

from ..buffers import array_module
from ..workspace import scratch
from .local import add_into

TAG = 11


def allreduce_naive(buf, comm, root: int = 0):
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1 or buf.size == 0:
        return buf
    if rank == root:
        incoming = scratch(buf.size, buf.dtype, array_module(buf))  # (n,)
        for src in range(p):
            if src != root:
                comm.Recv(incoming, source=src, tag=TAG)
                add_into(buf, incoming)
        for dst in range(p):
            if dst != root:
                comm.Send(buf, dest=dst, tag=TAG)
    else:
        comm.Send(buf, dest=root, tag=TAG)
        comm.Recv(buf, source=root, tag=TAG)
    return buf
