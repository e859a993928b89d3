"""Ring all-reduce = ring reduce-scatter + ring all-gather.

Algorithm: cut the buffer into p chunks (``chunk_offsets``). Reduce-scatter:
on each of p - 1 steps every rank sends one chunk to its right neighbour,
receives another from its left and adds it in; after p - 1 steps rank r
holds the complete sum of chunk r. All-gather: p - 1 more steps pass the
finished chunks around the ring until everyone has all of them. Each chunk
is summed once, by one chain of ranks, then copied: every rank ends with
the same bits.

Restrictions: none (any p; chunks differ by at most one element and may
be empty when n < p). Chunks longer than SEGMENT_BYTES are sent as several
messages in the reduce-scatter: one alpha each, which the formula below
leaves out and costmodel.formulas.reduce_scatter_ring counts.

Cost (n bytes):
  reduce_scatter_ring = (p-1).alpha + (p-1)/p.n.beta + (p-1)/p.n.gamma
  all_gather_ring     = (p-1).alpha + (p-1)/p.n.beta
  allreduce_ring      = 2(p-1).alpha + 2(p-1)/p.n.beta + (p-1)/p.n.gamma

Wins: long messages. Each rank sends 2(p-1)/p.n bytes, the lower bound
for all-reduce, and only talks to its neighbours, so every link of a ring
or switch is busy at once. The 2(p-1) latency terms make it lose to
recursive doubling for short messages. Reference: Patarasuk & Yuan,
"Bandwidth optimal all-reduce algorithms for clusters of workstations",
JPDC 2009; the algorithm NCCL and Horovod made standard for deep learning.
"""
from __future__ import annotations

from ..buffers import array_module
from ..topology import Ring, chunk_offsets
from ..workspace import scratch
from .local import add_into

TAG = 14
# Long chunks move in segments: the received segment is added while it is
# still in cache (a 1 MiB segment fits the 2 MiB L2 here), and the scratch
# buffer stays small. 16 MiB all-reduce at p = 4 went from 1.16x to about
# 1.4x the library's busbw with it (docs/benchmarks.md).
SEGMENT_BYTES = 1 << 20


def reduce_scatter_ring(buf, comm):
    """Sum ``buf`` over ranks; rank r's chunk ``buf[offs[r]:offs[r+1]]`` gets the total.

    Returns that chunk (a view). The rest of ``buf`` holds partial sums.
    """
    ring, n = Ring(comm.Get_rank(), comm.Get_size()), buf.size
    offs = chunk_offsets(n, ring.size)
    if ring.size > 1 and n > 0:
        seg = max(1, SEGMENT_BYTES // buf.itemsize)
        incoming = scratch(min(seg, offs[1] - offs[0]), buf.dtype, array_module(buf))  # (seg,)
        for step in range(ring.size - 1):
            send, recv = ring.reduce_scatter_chunks(step)
            out_chunk, in_chunk = buf[offs[send]:offs[send + 1]], buf[offs[recv]:offs[recv + 1]]
            # Every rank loops over the largest chunk's segments, so the Sendrecv
            # calls pair up even where neighbouring chunks differ by one element.
            for lo in range(0, offs[1] - offs[0], seg):
                target = in_chunk[lo:lo + seg]
                into = incoming[: target.size]
                comm.Sendrecv(out_chunk[lo:lo + seg], dest=ring.right, sendtag=TAG,
                              recvbuf=into, source=ring.left, recvtag=TAG)
                add_into(target, into)
    return buf[offs[ring.rank]:offs[ring.rank + 1]]


def all_gather_ring(buf, comm):
    """On entry rank r's chunk of ``buf`` is valid; on return every chunk is."""
    ring, n = Ring(comm.Get_rank(), comm.Get_size()), buf.size
    if ring.size == 1 or n == 0:
        return buf
    offs = chunk_offsets(n, ring.size)
    for step in range(ring.size - 1):
        send, recv = ring.all_gather_chunks(step)
        comm.Sendrecv(buf[offs[send]:offs[send + 1]], dest=ring.right, sendtag=TAG,
                      recvbuf=buf[offs[recv]:offs[recv + 1]], source=ring.left, recvtag=TAG)
    return buf


def allreduce_ring(buf, comm):
    reduce_scatter_ring(buf, comm)
    return all_gather_ring(buf, comm)
