"""Exercise 19.1 (lesson 19): a two-level all-reduce.

The ranks sit on nodes of ``ranks_per_node`` consecutive ranks (rank r on
node r // ranks_per_node). Links inside a node are fast, between nodes
slow, so only one rank per node (its leader, local rank 0) should cross:
1. sum onto each node's leader (``local.Reduce``, local = the node's ranks
   from ``comm.Split(color=node)``);
2. all-reduce among the leaders (a communicator of the leaders only:
   ``comm.Split`` with ``MPI.UNDEFINED`` as the colour of the others,
   who get ``MPI.COMM_NULL``);
3. broadcast the total inside each node (``local.Bcast``).
Free the communicators you split.

The checker compares with MPI_Allreduce on 4 and 6 ranks, with nodes of
2 and 3.
"""
from mpi4py import MPI


def hierarchical_allreduce(buf, comm, ranks_per_node):
    """Sum the 1-D NumPy array ``buf`` over all ranks, in place, crossing nodes on leaders only; return it."""
    r = comm.Get_rank()
    local = comm.Split(color=r // ranks_per_node, key=r)
    leader = local.Get_rank() == 0
    leaders = comm.Split(color=0 if leader else MPI.UNDEFINED, key=r)
    local.Reduce(MPI.IN_PLACE if leader else buf, buf if leader else None, op=MPI.SUM, root=0)
    if leader:
        leaders.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        leaders.Free()
    local.Bcast(buf, root=0)
    local.Free()
    return buf
