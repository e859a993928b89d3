"""Multi-channel ring all-reduce: L rings over all P ranks at once, each leaving a node through another rank.

Algorithm: ranks are numbered node by node (L per node, N nodes). The
buffer is cut into L segments, one per channel. Channel c is a ring over
all P ranks that visits each node's ranks in the order c, c+1, ..., c+L-1
(mod L), so it enters a node at local rank c and leaves it from local
rank c-1: every local rank is the exit, towards the next node, of exactly
one channel. Each channel runs a ring all-reduce (p-1 reduce-scatter and
p-1 all-gather steps) on its segment, and at every step all L channels'
messages are in flight together (Isend/Irecv): each rank sends one
channel's chunk across nodes on its own NIC and the others over NVLink.
This is how NCCL's ring runs on a DGX: as many rings as NICs, each
crossing between nodes through a different one, so the ring's bus
bandwidth reaches what the node's NICs carry together.

Each segment is summed by one chain of ranks in a fixed order, so every
rank ends with the same bits.

Restrictions: the communicator's size must be a multiple of L.

Cost (n bytes, b = n/(L p) per message): 2(p-1) steps; a step lasts the
slower of the L-1 (L with one node) NVLink messages one after another
through the rank's link and the one message through its NIC (shared by
L/R ranks with R NICs per node), plus the reductions of L chunks in the
reduce-scatter steps (``costmodel.formulas.allreduce_ring_channels_s``).
Every byte crosses every node boundary, 2(p-1)/p of the buffer per
node: with one NIC per GPU the bus bandwidth tends to the node's NICs
together (8 x 25 GB/s on DGX A100), while the hierarchical all-reduces
carry 2(N-1)/N and can go past it on few nodes.

Reference: Jeaugey, "NCCL 2.0" (GTC 2017) and NCCL's documentation of its
ring and channel topology on DGX systems.
"""
from __future__ import annotations

from ..buffers import array_module
from ..nodes import ranks_per_node
from ..topology import Ring, chunk_offsets
from ..workspace import scratch
from .local import wait_then_add

TAG = 71


def allreduce_ring_channels(buf, comm, ranks_per_node: int):
    size = comm.Get_size()
    if ranks_per_node < 1 or size % ranks_per_node:
        raise ValueError(f"the multi-channel ring needs the {size} ranks to fill nodes of {ranks_per_node}: "
                         f"use a rank count that is a multiple of {ranks_per_node}")
    L, n = ranks_per_node, buf.size
    if size == 1 or n == 0:
        return buf
    rank = comm.Get_rank()
    node, local = rank // L, rank % L
    segment = chunk_offsets(n, L)
    chunk = int(chunk_offsets(segment[1], size)[1])  # the longest chunk of the longest segment (the first ones)
    space = scratch(L * chunk, buf.dtype, array_module(buf))

    def world(position, c):
        """The rank at ``position`` of channel c's ring: node by node, each node's ranks from local rank c."""
        return position // L * L + (position % L + c) % L

    rings = []  # per channel: (its segment, its chunks, my place in its ring, my right and left neighbours)
    for c in range(L):
        ring = Ring(node * L + (local - c) % L, size)
        seg = buf[segment[c]:segment[c + 1]]
        rings.append((seg, chunk_offsets(seg.size, size), ring, world(ring.right, c), world(ring.left, c)))
    for step in range(2 * (size - 1)):
        requests, adds = [], []
        for c, (seg, offs, ring, right, left) in enumerate(rings):
            if step < size - 1:
                send, recv = ring.reduce_scatter_chunks(step)
                into = space[c * chunk:][: offs[recv + 1] - offs[recv]]
                adds.append((seg[offs[recv]:offs[recv + 1]], into))
            else:
                send, recv = ring.all_gather_chunks(step - (size - 1))
                into = seg[offs[recv]:offs[recv + 1]]
            requests += [comm.Irecv(into, source=left, tag=TAG + c),
                         comm.Isend(seg[offs[send]:offs[send + 1]], dest=right, tag=TAG + c)]
        wait_then_add(requests, adds)
    return buf


def allreduce_ring_channels_nodes(buf, comm):
    """The registry's "ring_channels": nodes from ``comm/nodes.py`` (emulated or real), a channel per local rank."""
    return allreduce_ring_channels(buf, comm, ranks_per_node(comm))
