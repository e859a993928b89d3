"""Recursive doubling: all-reduce and all-gather.

Algorithm (power-of-two group, extra ranks folded in and out as
``fold.py`` describes): in round k each rank exchanges data with the rank
whose number differs in bit k (mask = 2^k).
- all-reduce: partners swap their whole buffers and both add; after
  lg p rounds everyone has the total. Partners compute a + b and b + a
  from the same two partial sums, the same bits, so all ranks agree.
- all-gather: partners swap the blocks they have collected so far, so the
  amount each rank holds doubles every round.

Restrictions: none (non-powers of two add a fold step in and out).

Cost (p a power of two, n bytes):
  allreduce_recursive_doubling  = lg p.alpha + lg p.n.beta + lg p.n.gamma
  all_gather_recursive_doubling = lg p.alpha + (p-1)/p.n.beta
Otherwise the all-reduce adds 2.alpha + 2n.beta + n.gamma, the all-gather
alpha + n/p.beta (chunk in) + alpha + n.beta (result out).

Wins: short messages (fewest rounds, no chunking overhead): MPICH uses
it for all-reduce up to 2 KiB. For long messages the lg p.n bytes lose to
ring and Rabenseifner. Reference: Thakur, Rabenseifner & Gropp 2005.
"""
from __future__ import annotations

from ..buffers import array_module
from ..topology import Pof2, chunk_offsets
from ..workspace import scratch
from .fold import fold_in, fold_out
from .local import add_into

TAG = 17


def double(buf, comm, topo: Pof2, blocks: list[int]) -> None:
    """The pof2 phase of all-gather: newrank i starts with block i, ends with all blocks."""
    mask = 1
    while mask < topo.pof2:
        mine = topo.newrank & ~(mask - 1)  # first block this rank holds so far
        theirs = mine ^ mask
        partner = topo.partner(mask)
        comm.Sendrecv(buf[blocks[mine]:blocks[mine + mask]], dest=partner, sendtag=TAG,
                      recvbuf=buf[blocks[theirs]:blocks[theirs + mask]], source=partner, recvtag=TAG)
        mask <<= 1


def all_gather_recursive_doubling(buf, comm):
    """On entry rank r's chunk (``chunk_offsets``) of ``buf`` is valid; on return every chunk is."""
    topo, n = Pof2(comm.Get_rank(), comm.Get_size()), buf.size
    if topo.size == 1 or n == 0:
        return buf
    offs = chunk_offsets(n, topo.size)
    partner = topo.fold_partner
    if topo.folded_out:
        comm.Send(buf[offs[topo.rank]:offs[topo.rank + 1]], dest=partner, tag=TAG)
    else:
        if partner is not None:
            comm.Recv(buf[offs[partner]:offs[partner + 1]], source=partner, tag=TAG)
        double(buf, comm, topo, topo.block_offsets(offs))
    fold_out(buf, comm, topo)
    return buf


def allreduce_recursive_doubling(buf, comm):
    topo = Pof2(comm.Get_rank(), comm.Get_size())
    if topo.size == 1 or buf.size == 0:
        return buf
    fold_in(buf, comm, topo)
    if not topo.folded_out:
        incoming = scratch(buf.size, buf.dtype, array_module(buf))  # (n,)
        mask = 1
        while mask < topo.pof2:
            partner = topo.partner(mask)
            comm.Sendrecv(buf, dest=partner, sendtag=TAG, recvbuf=incoming, source=partner, recvtag=TAG)
            add_into(buf, incoming)
            mask <<= 1
    fold_out(buf, comm, topo)
    return buf
