"""Binomial-tree broadcast.

Algorithm: relative to the root, rank v receives from v - mask, where
mask is v's lowest set bit, then forwards to v + mask/2, v + mask/4, ...
The number of ranks holding the data doubles every round (MPICH's
short-message MPI_Bcast; the loop is the mpi4py demo's ``mask <<= 1``).

Restrictions: none (any p, any root).

Cost = ceil(lg p).(alpha + n.beta)

Wins: short messages, where latency dominates. For long ones the whole
message crosses ceil(lg p) links in sequence; a scatter + all-gather
broadcast (van de Geijn) moves ~2n per rank instead.
"""
from __future__ import annotations

TAG = 12


def broadcast_binomial(buf, comm, root: int = 0):
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1 or buf.size == 0:
        return buf
    vrank = (rank - root) % p
    mask = 1
    while mask < p:
        if vrank & mask:
            comm.Recv(buf, source=(vrank - mask + root) % p, tag=TAG)
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if vrank + mask < p:
            comm.Send(buf, dest=(vrank + mask + root) % p, tag=TAG)
        mask >>= 1
    return buf
