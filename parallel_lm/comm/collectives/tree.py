"""Tree all-reduce: binomial-tree reduce to rank 0, then binomial broadcast.

Algorithm: in round k (mask = 2^k) a rank with bit k set sends its partial
sum to rank - mask and drops out; the receiver adds it. After ceil(lg p)
rounds rank 0 holds the total, which ``broadcast_binomial`` sends back
down the same tree. Each partial sum is formed in a fixed order and the
result is copied out, so every rank ends with the same bits.

Restrictions: none (any p).

Cost = 2.ceil(lg p).alpha + 2.ceil(lg p).n.beta + ceil(lg p).n.gamma

Wins: short messages on a few ranks: lg p latency instead of the
naive p, but every round still moves the whole buffer, so for long
messages ring or Rabenseifner (about 2n bytes per rank in all) win.
"""
from __future__ import annotations

from ..buffers import array_module
from ..workspace import scratch
from .broadcast import broadcast_binomial
from .local import add_into

TAG = 13


def reduce_binomial(buf, comm, root: int = 0):
    """Sum every rank's ``buf`` into the root's ``buf``; other ranks' buffers become partial sums."""
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1 or buf.size == 0:
        return buf
    vrank = (rank - root) % p
    incoming = scratch(buf.size, buf.dtype, array_module(buf))  # (n,)
    mask = 1
    while mask < p:
        if vrank & mask:
            comm.Send(buf, dest=(vrank - mask + root) % p, tag=TAG)
            break
        if vrank + mask < p:
            comm.Recv(incoming, source=(vrank + mask + root) % p, tag=TAG)
            add_into(buf, incoming)
        mask <<= 1
    return buf


def allreduce_tree(buf, comm):
    reduce_binomial(buf, comm, root=0)
    return broadcast_binomial(buf, comm, root=0)
