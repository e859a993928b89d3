"""Bruck all-to-all: ceil(lg p) steps, each moving about half of all blocks a power-of-two distance.

Algorithm (Bruck et al.): 1. Rotate: working block i is the block for
rank r + i. 2. On step k (distance d = 2^k) send every working block
whose index has bit k set to rank r + d and receive the same positions
from rank r - d. A block that must travel i ranks to the right does so in
the hops of i's binary digits, so after ceil(lg p) steps working block i
holds the block that rank r - i sent to r. 3. Rotate back into ``recvbuf``.
Each step packs its blocks into one message, so the count of messages
is logarithmic; the price is that a block is sent once per one-bit of
its distance, about (lg p)/2 times.

The variable-count form (``all_to_allv_bruck``) moves blocks of different
sizes, so each step first sends the sizes of the blocks that follow
(one more small message per step); a rank cannot know them otherwise,
because the blocks it relays belong to other pairs of ranks.

Restrictions: none (any p, empty blocks, any dtype).

Cost (n bytes per rank, blocks of b = n/p bytes, c_k = how many of
0 .. p-1 have bit k set):
  all_to_all_bruck  = ceil(lg p).alpha + sum_k c_k.b.beta   (= lg p.alpha + (lg p)/2.n.beta for p = 2^m)
  all_to_allv_bruck = 2 ceil(lg p).alpha + the relayed bytes.beta
Local copies (the rotations and packing, about 3n bytes) are not in the formula.

Wins: short blocks on many ranks, where the p - 1 latencies of the
pairwise exchange dominate; MPICH uses it for blocks up to 256 bytes.
Reference: J. Bruck, C.-T. Ho, S. Kipnis, E. Upfal & D. Weathersby,
"Efficient algorithms for all-to-all communications in multiport
message-passing systems", IEEE TPDS 8(11), 1997; Thakur et al. 2005, 3.5.
"""
from __future__ import annotations

import numpy as np

from ..buffers import array_module
from ..workspace import scratch
from .alltoall_pairwise import block_offsets
from .local import copy_into

TAG = 22


def _steps(p: int):
    """(distance, the working block indices that move) for each step."""
    d = 1
    while d < p:
        yield d, [i for i in range(p) if i & d]
        d <<= 1


def all_to_all_bruck(sendbuf, recvbuf, comm):
    rank, p = comm.Get_rank(), comm.Get_size()
    b = sendbuf.size // p
    if p == 1 or b == 0:
        copy_into(recvbuf, sendbuf)
        return recvbuf
    half = (p + 1) // 2  # the most blocks one step moves
    space = scratch((p + 2 * half) * b, sendbuf.dtype, array_module(sendbuf))
    work, out, into = space[:p * b], space[p * b:(p + half) * b], space[(p + half) * b:]
    block = lambda a, i: a[i * b:(i + 1) * b]
    for i in range(p):
        copy_into(block(work, i), block(sendbuf, (rank + i) % p))
    for d, moving in _steps(p):
        for j, i in enumerate(moving):
            copy_into(block(out, j), block(work, i))
        m = len(moving) * b
        comm.Sendrecv(out[:m], dest=(rank + d) % p, sendtag=TAG, recvbuf=into[:m], source=(rank - d) % p, recvtag=TAG)
        for j, i in enumerate(moving):
            copy_into(block(work, i), block(into, j))
    for i in range(p):
        copy_into(block(recvbuf, (rank - i) % p), block(work, i))
    return recvbuf


def all_to_allv_bruck(sendbuf, sendcounts, recvbuf, recvcounts, comm):
    rank, p = comm.Get_rank(), comm.Get_size()
    xp = array_module(sendbuf)
    send, recv = block_offsets(sendcounts), block_offsets(recvcounts)
    work = [sendbuf[send[(rank + i) % p]:send[(rank + i) % p + 1]] for i in range(p)]
    for d, moving in _steps(p):
        sizes = np.array([work[i].size for i in moving], dtype=np.int64)
        incoming = np.empty_like(sizes)
        comm.Sendrecv(sizes, dest=(rank + d) % p, sendtag=TAG, recvbuf=incoming, source=(rank - d) % p, recvtag=TAG)
        packed = xp.concatenate([work[i] for i in moving])
        into = xp.empty(int(incoming.sum()), dtype=sendbuf.dtype)
        comm.Sendrecv(packed, dest=(rank + d) % p, sendtag=TAG, recvbuf=into, source=(rank - d) % p, recvtag=TAG)
        starts = block_offsets(incoming)
        for j, i in enumerate(moving):
            work[i] = into[starts[j]:starts[j + 1]]
    for i in range(p):
        source = (rank - i) % p
        if work[i].size != recv[source + 1] - recv[source]:
            raise ValueError(f"rank {rank} expected {recv[source + 1] - recv[source]} elements from rank {source}, "
                             f"which sent {work[i].size}: recvcounts must match what the senders' sendcounts say")
        copy_into(recvbuf[recv[source]:recv[source + 1]], work[i])
    return recvbuf
