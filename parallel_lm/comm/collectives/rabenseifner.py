"""Rabenseifner all-reduce = recursive-halving reduce-scatter + recursive-doubling all-gather.

Algorithm: fold the extra ranks in (``fold.py``), cut the buffer into pof2
blocks, run ``halve`` so newrank i holds the sum of block i, run
``double`` so everyone collects every block, and fold the result back
out to the extra ranks. Each block is summed once and copied, so all
ranks end with the same bits.

Restrictions: none.

Cost (p a power of two, n bytes):
  allreduce_rabenseifner = 2 lg p.alpha + 2(p-1)/p.n.beta + (p-1)/p.n.gamma
Otherwise, with p' = pof2: 2 lg p'.alpha + 2(p'-1)/p'.n.beta + (p'-1)/p'.n.gamma
plus 2.alpha + 2n.beta + n.gamma for the folds.

Wins: long messages on power-of-two p: the ring's optimal bandwidth term
with lg p instead of p - 1 latency terms. MPICH's default for long
all-reduces. Reference: R. Rabenseifner, "Optimization of collective
reduction operations", ICCS 2004; Thakur, Rabenseifner & Gropp 2005.
"""
from __future__ import annotations

from ..topology import Pof2, chunk_offsets
from .fold import fold_in, fold_out
from .recursive_doubling import double
from .recursive_halving import halve


def allreduce_rabenseifner(buf, comm):
    topo = Pof2(comm.Get_rank(), comm.Get_size())
    if topo.size == 1 or buf.size == 0:
        return buf
    fold_in(buf, comm, topo)
    if not topo.folded_out:
        blocks = chunk_offsets(buf.size, topo.pof2)
        halve(buf, comm, topo, blocks)
        double(buf, comm, topo, blocks)
    fold_out(buf, comm, topo)
    return buf
