"""Hierarchical all-reduce: reduce-scatter inside each node, rings across nodes, all-gather inside.

Algorithm: ranks are numbered node by node (rank = node x L + local, L
ranks per node, N nodes). 1. Ring reduce-scatter among the L ranks of a
node: local rank i ends with the node's sum of chunk i (n/L bytes).
2. Ring all-reduce of that chunk among the N ranks with the same local
index, one per node: L independent rings, one per NIC on a node with a
NIC per GPU (a "rail"), as NCCL runs DGX clusters. 3. Ring all-gather
inside the node. Every chunk is summed by one chain of ranks in a fixed
order, so every rank ends with the same bits.

With R rails (R divides L; default R = L), only R local ranks cross
between nodes: each of the other L - R hands its chunk to its rail's
leader before step 2 and gets it back after, so R rings carry n/R bytes
each. R = 1 is the classic layout with one leader per node (Horovod's
hierarchical all-reduce); R = L is NCCL's multi-rail one.

Restrictions: the communicator's size must be a multiple of L, and R must
divide L. Under MPI the registry's "hierarchical" takes L and R from
``comm/nodes.py``: emulated (``PARALLEL_LM_RANKS_PER_NODE``,
``PARALLEL_LM_RAILS``) or the library's shared-memory split.

Cost (n bytes; alpha_i, beta_i inside a node, alpha_o, beta_o between):
  2(L-1).alpha_i + 2(L-1)/L.n.beta_i + (L-1)/L.n.gamma        (steps 1 and 3)
  + 2(N-1).alpha_o + 2(N-1)/N.(n/L).beta_o + (N-1)/N.(n/L).gamma  (step 2)
With R rails, the cross-node ring is on n/R bytes, and handing the chunks
to and from the leaders adds 2(L/R-1).(alpha_i + n/L.beta_i). With fewer
NICs per node than rings, the rings share them: beta_o x rings/NICs
(``costmodel.formulas.allreduce_hierarchical_s``).

Wins: clusters whose links between nodes are much slower than inside
them. A flat ring sends 2(P-1)/P.n bytes over the slow links per rank; here
each NIC carries 2(N-1)/N.n/L, L times less. Reference: Jia et al.,
"Highly Scalable Deep Learning Training System with Mixed-Precision"
(2018), hierarchical all-reduce; NCCL's multi-rail rings on DGX systems.
"""
from __future__ import annotations

from ..nodes import rails, ranks_per_node
from ..topology import chunk_offsets
from .ring import all_gather_ring, allreduce_ring, reduce_scatter_ring

TAG = 18


class Subgroup:
    """Ranks ``first + i x stride`` (i < size) of ``comm`` seen as a communicator of their own.

    Only rank arithmetic, so it also works when ranks are vectors (the simulator).
    """

    def __init__(self, comm, index, size: int, first, stride: int):
        self.comm, self.index, self.size, self.first, self.stride = comm, index, size, first, stride

    def _world(self, r):
        return self.first + r * self.stride

    def Get_rank(self):
        return self.index

    def Get_size(self):
        return self.size

    def Send(self, buf, dest, tag=0):
        self.comm.Send(buf, dest=self._world(dest), tag=tag)

    def Recv(self, buf, source, tag=0):
        self.comm.Recv(buf, source=self._world(source), tag=tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0):
        self.comm.Sendrecv(sendbuf, dest=self._world(dest), sendtag=sendtag, recvbuf=recvbuf,
                           source=self._world(source), recvtag=recvtag)


def allreduce_hierarchical(buf, comm, ranks_per_node: int, rails: int | None = None):
    size = comm.Get_size()
    if ranks_per_node < 1 or size % ranks_per_node:
        raise ValueError(f"hierarchical all-reduce needs the {size} ranks to fill nodes of {ranks_per_node}: "
                         f"use a rank count that is a multiple of {ranks_per_node}")
    rails = ranks_per_node if rails is None else rails
    if rails < 1 or ranks_per_node % rails:
        raise ValueError(f"hierarchical all-reduce: {rails} rails must divide the {ranks_per_node} ranks per node")
    rank, nodes, group = comm.Get_rank(), size // ranks_per_node, ranks_per_node // rails
    node, local = rank // ranks_per_node, rank % ranks_per_node
    inside = Subgroup(comm, local, ranks_per_node, node * ranks_per_node, 1)
    reduce_scatter_ring(buf, inside)
    offs = chunk_offsets(buf.size, ranks_per_node)
    leader = local - local % group  # the local rank that carries this rank's rail between nodes
    if local != leader:  # hand my chunk to the rail's leader, get it back summed over all nodes
        mine = buf[offs[local]:offs[local + 1]]
        comm.Send(mine, dest=rank - local + leader, tag=TAG)
        comm.Recv(mine, source=rank - local + leader, tag=TAG)
    else:
        members = range(leader + 1, leader + group)
        for m in members:
            comm.Recv(buf[offs[m]:offs[m + 1]], source=rank - local + m, tag=TAG)
        across = Subgroup(comm, node, nodes, local, ranks_per_node)
        allreduce_ring(buf[offs[leader]:offs[leader + group]], across)
        for m in members:
            comm.Send(buf[offs[m]:offs[m + 1]], dest=rank - local + m, tag=TAG)
    return all_gather_ring(buf, inside)


def allreduce_hierarchical_nodes(buf, comm):
    """The registry's "hierarchical": nodes and rails from ``comm/nodes.py`` (emulated or real)."""
    per_node = ranks_per_node(comm)
    return allreduce_hierarchical(buf, comm, per_node, rails(per_node))
