"""Folding extra ranks in and out, so power-of-two algorithms run on any p.

With pof2 the largest power of two <= p and rem = p - pof2, the ranks
below 2.rem pair up (see ``topology.Pof2``). Before the power-of-two phase
the even rank of each pair sends its data to the odd one, which adds it
in (``fold_in``); afterwards the odd rank sends the result back
(``fold_out``). This is how MPICH's recursive doubling and Rabenseifner
all-reduces handle any p (Thakur, Rabenseifner & Gropp 2005, section 4).

Cost when p is not a power of two:
  fold_in  = alpha + n.beta + n.gamma
  fold_out = alpha + n.beta
"""
from __future__ import annotations

from ..buffers import array_module
from ..topology import Pof2
from ..workspace import scratch
from .local import add_into

TAG = 15


def fold_in(buf, comm, topo: Pof2):
    partner = topo.fold_partner
    if partner is None or buf.size == 0:
        return
    if topo.folded_out:
        comm.Send(buf, dest=partner, tag=TAG)
    else:
        incoming = scratch(buf.size, buf.dtype, array_module(buf))  # (n,)
        comm.Recv(incoming, source=partner, tag=TAG)
        add_into(buf, incoming)


def fold_out(buf, comm, topo: Pof2):
    partner = topo.fold_partner
    if partner is None or buf.size == 0:
        return
    if topo.folded_out:
        comm.Recv(buf, source=partner, tag=TAG)
    else:
        comm.Send(buf, dest=partner, tag=TAG)
