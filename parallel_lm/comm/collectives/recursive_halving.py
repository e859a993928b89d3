"""Recursive-halving reduce-scatter.

Algorithm (power-of-two group of pof2 ranks, p ranks folded onto it as
``fold.py`` describes): in the first round each rank exchanges half the
buffer with the rank pof2/2 away: it sends the half its partner will own
and adds the half it keeps. Each following round halves the range again
with a partner half as far away. After lg pof2 rounds each rank holds the
full sum of its own block. Every element is summed along one fixed chain
and ends on one rank, so results are deterministic.

Restrictions: none (non-powers of two fold the extra ranks in first and
hand their chunk back at the end).

Cost (p a power of two, n bytes):
  reduce_scatter_recursive_halving = lg p.alpha + (p-1)/p.n.beta + (p-1)/p.n.gamma
Otherwise add alpha + n.beta + n.gamma (fold in) + alpha + n/p.beta (chunk back).

Wins over the ring reduce-scatter when latency matters (lg p instead of
p - 1 messages) at the same bandwidth term, on power-of-two p. Reference:
Thakur, Rabenseifner & Gropp, "Optimization of collective communication
operations in MPICH", IJHPCA 2005, section 4.
"""
from __future__ import annotations

from ..buffers import array_module
from ..topology import Pof2, chunk_offsets
from ..workspace import scratch
from .fold import fold_in
from .local import add_into

TAG = 16


def halve(buf, comm, topo: Pof2, blocks: list[int]) -> None:
    """The pof2 phase: after it, newrank i holds the sum of ``buf[blocks[i]:blocks[i+1]]``."""
    lo, hi = 0, topo.pof2
    half = max(blocks[hi // 2] - blocks[0], blocks[hi] - blocks[hi // 2])
    incoming = scratch(half, buf.dtype, array_module(buf))  # (~n/2,)
    mask = topo.pof2 >> 1
    while mask:
        mid = (lo + hi) // 2
        # The lower rank of a pair keeps the lower half.
        (keep_lo, keep_hi), (send_lo, send_hi) = ((lo, mid), (mid, hi)) if not topo.newrank & mask else ((mid, hi), (lo, mid))
        into = incoming[: blocks[keep_hi] - blocks[keep_lo]]
        partner = topo.partner(mask)
        comm.Sendrecv(buf[blocks[send_lo]:blocks[send_hi]], dest=partner, sendtag=TAG,
                      recvbuf=into, source=partner, recvtag=TAG)
        add_into(buf[blocks[keep_lo]:blocks[keep_hi]], into)
        lo, hi = keep_lo, keep_hi
        mask >>= 1


def reduce_scatter_recursive_halving(buf, comm):
    """Sum ``buf`` over ranks; rank r's chunk (``chunk_offsets``) gets the total. Returns that chunk."""
    topo, n = Pof2(comm.Get_rank(), comm.Get_size()), buf.size
    offs = chunk_offsets(n, topo.size)
    mine = buf[offs[topo.rank]:offs[topo.rank + 1]]
    if topo.size == 1 or n == 0:
        return mine
    fold_in(buf, comm, topo)
    partner = topo.fold_partner
    if topo.folded_out:
        comm.Recv(mine, source=partner, tag=TAG)
        return mine
    halve(buf, comm, topo, topo.block_offsets(offs))
    if partner is not None:  # this rank also carries partner's chunk: hand it back
        comm.Send(buf[offs[partner]:offs[partner + 1]], dest=partner, tag=TAG)
    return mine
