"""Which ranks share a node: emulated on one machine, or asked of the MPI library.

``ranks_per_node(comm)``:
- ``settings.ranks_per_node`` = L (``PARALLEL_LM_RANKS_PER_NODE``, or ``bench --ranks-per-node``):
  emulated nodes of L consecutive ranks, so one machine can run the
  hierarchical all-reduce as a cluster would (with ``--netem`` making the
  messages between emulated nodes slow);
- otherwise ``MPI_Comm_split_type(COMM_TYPE_SHARED)``: the ranks that can
  share memory, one group per real node. Remembered on the communicator
  (an MPI attribute), since the split is itself a collective.

The hierarchical all-reduce needs nodes of equal size numbered node by
node (ranks 0..L-1 on the first node, and so on), which is how Open MPI
and MPICH place ranks by default; anything else is refused with the
flag that emulates a layout.

``rails(L)``: how many of a node's L ranks run a ring between nodes
(``settings.rails``: ``PARALLEL_LM_RAILS``, default L: one ring per local rank, as NCCL runs
one per NIC on a DGX). It must divide L.
"""
from __future__ import annotations

from . import settings
from .settings import RAILS, RANKS_PER_NODE

_keyval = None


def _shared_memory_nodes(comm) -> int:
    from mpi4py import MPI
    global _keyval
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval()
    cached = comm.Get_attr(_keyval)
    if cached is not None:
        return cached
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local, size = node.Get_rank(), node.Get_size()
    node.Free()
    first = comm.Get_rank() - local  # rank of this node's local rank 0, if nodes are numbered node by node
    sizes_at = comm.allgather(size)  # every rank calls it: a node whose first rank is off the grid must not skip it
    fits = int(first % size == 0 and sizes_at[first] == size)
    sizes = comm.allreduce(size, op=MPI.MAX), comm.allreduce(size, op=MPI.MIN)
    if sizes[0] != sizes[1] or not comm.allreduce(fits, op=MPI.MIN):
        raise ValueError(f"the hierarchical all-reduce needs nodes of equal size with ranks numbered node by node "
                         f"(node sizes here {sizes[1]}..{sizes[0]}): place ranks by node (mpiexec -ppn L, "
                         f"or Open MPI's --map-by slot), or set {RANKS_PER_NODE}")
    comm.Set_attr(_keyval, size)
    return size


def emulated_ranks_per_node() -> int | None:
    """The emulated node size (``settings.ranks_per_node``), or None for the real nodes."""
    return settings.current().ranks_per_node


def ranks_per_node(comm) -> int:
    """L, the ranks per node, checked to divide ``comm``'s size."""
    per_node = emulated_ranks_per_node() or _shared_memory_nodes(comm)
    size = comm.Get_size()
    if size % per_node:
        raise ValueError(f"{per_node} ranks per node do not divide the {size} ranks: "
                         f"run a multiple of {per_node} ranks, or set {RANKS_PER_NODE} to a divisor of {size}")
    return per_node


def rails(per_node: int) -> int:
    """Rings between nodes per node (``settings.rails``, default one per local rank)."""
    count = settings.current().rails or per_node
    if per_node % count:
        raise ValueError(f"{RAILS}={count} must divide the {per_node} ranks per node "
                         f"(each rail serves the same number of local ranks)")
    return count
