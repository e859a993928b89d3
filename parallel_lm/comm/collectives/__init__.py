"""One module per algorithm; these registries map the names users type to functions.

Every function takes ``(buf, comm)`` (broadcast also ``root``) and works
in place on a 1-D contiguous array; all-to-all takes ``(sendbuf, recvbuf,
comm)``, or ``(sendbuf, sendcounts, recvbuf, recvcounts, comm)`` for
variable counts. They only call the communicator's ``Get_rank``,
``Get_size``, ``Send``, ``Recv`` and ``Sendrecv``, so the same code runs
on a real MPI communicator or a simulated one. ``mpi`` is the exception:
it calls the library's own collective.
"""
from .alltoall_bruck import all_to_all_bruck, all_to_allv_bruck
from .alltoall_pairwise import all_to_all_pairwise, all_to_allv_pairwise
from .broadcast import broadcast_binomial
from .hierarchical import allreduce_hierarchical, allreduce_hierarchical_nodes
from .hierarchical_pipelined import allreduce_hierarchical_pipelined, allreduce_hierarchical_pipelined_nodes
from .mpi import all_gather_mpi, all_to_all_mpi, all_to_allv_mpi, allreduce_mpi, broadcast_mpi, reduce_scatter_mpi
from .naive import allreduce_naive
from .rabenseifner import allreduce_rabenseifner
from .recursive_doubling import all_gather_recursive_doubling, allreduce_recursive_doubling
from .recursive_halving import reduce_scatter_recursive_halving
from .ring import all_gather_ring, allreduce_ring, reduce_scatter_ring
from .ring_channels import allreduce_ring_channels, allreduce_ring_channels_nodes
from .tree import allreduce_tree

ALGORITHMS = {
    "naive": allreduce_naive,
    "tree": allreduce_tree,
    "ring": allreduce_ring,
    "recursive_doubling": allreduce_recursive_doubling,
    "rabenseifner": allreduce_rabenseifner,
    "hierarchical": allreduce_hierarchical_nodes,
    "hierarchical_pipelined": allreduce_hierarchical_pipelined_nodes,
    "ring_channels": allreduce_ring_channels_nodes,
    "mpi": allreduce_mpi,
}
# The all-reduces built on nodes (equal nodes numbered node by node, or refused): each name's function taking
# ranks_per_node, which the registry's entries above take from comm/nodes.py and the simulator from its topology.
NODE_ALGORITHMS = {
    "hierarchical": allreduce_hierarchical,
    "hierarchical_pipelined": allreduce_hierarchical_pipelined,
    "ring_channels": allreduce_ring_channels,
}
REDUCE_SCATTER_ALGORITHMS = {
    "ring": reduce_scatter_ring,
    "recursive_halving": reduce_scatter_recursive_halving,
    "mpi": reduce_scatter_mpi,
}
ALL_GATHER_ALGORITHMS = {
    "ring": all_gather_ring,
    "recursive_doubling": all_gather_recursive_doubling,
    "mpi": all_gather_mpi,
}
BROADCAST_ALGORITHMS = {
    "binomial": broadcast_binomial,
    "mpi": broadcast_mpi,
}
ALLTOALL_ALGORITHMS = {
    "pairwise": all_to_all_pairwise,
    "bruck": all_to_all_bruck,
    "mpi": all_to_all_mpi,
}
ALLTOALLV_ALGORITHMS = {  # the same names, variable counts
    "pairwise": all_to_allv_pairwise,
    "bruck": all_to_allv_bruck,
    "mpi": all_to_allv_mpi,
}
