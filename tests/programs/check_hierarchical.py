"""Run under ``mpiexec -n K``: the hierarchical all-reduce against MPI_Allreduce for every node size
dividing K and every rail count dividing the node size, the pipelined one for every node size and
several piece counts, and the multi-channel ring (its channels leave a node through different ranks) for
every node size; then the registry's "hierarchical" and "hierarchical_pipelined" on the nodes of
comm/nodes.py (PARALLEL_LM_RANKS_PER_NODE, or the shared-memory split).

Integer-valued data, so every order of addition gives the same bits. Reports one case per node size and rail
count (report.py: ``nodes of 2, 1 rail(s)``, each over 5 lengths and 2 dtypes, bitwise on every rank), one
for the registry (``registry``, with the node size it found) and one for a node size that does not divide K
(``refused``); for the multi-channel ring, ``channels nodes of 2``; for the pipelined one, ``pipelined nodes of 2`` (5 lengths x 2 dtypes x 3 piece counts, and the
same bits on every rank from uniform random floats) and ``pipelined registry``.
"""
import numpy as np
from mpi4py import MPI
from report import case

from parallel_lm.comm import allreduce
from parallel_lm.comm.collectives.hierarchical import allreduce_hierarchical
from parallel_lm.comm.collectives.hierarchical_pipelined import allreduce_hierarchical_pipelined
from parallel_lm.comm.collectives.ring_channels import allreduce_ring_channels
from parallel_lm.comm.nodes import ranks_per_node
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()


def differs(n, dtype, run) -> bool:
    """True on every rank if ``run`` gave any rank other bits than MPI_Allreduce, for n elements of ``dtype``."""
    x = np.random.default_rng(1000 * n + rank).integers(-8, 9, n).astype(dtype)
    want = x.copy()
    comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
    run(x)
    return comm.allreduce(not np.array_equal(x, want), op=MPI.LOR)


def report(name, ok, line, **measured):
    if rank == 0:
        case(name, ok, line, **measured)


divisors = lambda m: [d for d in range(1, m + 1) if m % d == 0]
for per_node in divisors(p):
    for rails in divisors(per_node):
        wrong = [f"{n} {dtype.__name__}" for n in (0, 1, p - 1, 101, 300_007) for dtype in (np.float32, np.int64)
                 if differs(n, dtype, lambda x: allreduce_hierarchical(x, comm, per_node, rails))]
        report(f"nodes of {per_node}, {rails} rail(s)", not wrong,
               f"nodes of {per_node}, {rails} rail(s): " + (f"differs from MPI at {wrong}" if wrong else
                                                            "bitwise MPI_Allreduce at 5 lengths, float32 and int64"),
               wrong=wrong)
for per_node in divisors(p):
    pipelined = lambda pieces: lambda x: allreduce_hierarchical_pipelined(x, comm, per_node, pieces)
    wrong = [f"{n} {dtype.__name__} {pieces} piece(s)" for n in (0, 1, p - 1, 101, 300_007)
             for dtype in (np.float32, np.int64) for pieces in (None, 1, 7)
             if differs(n, dtype, pipelined(pieces))]
    floats = np.random.default_rng(rank).uniform(-1, 1, 30_011).astype(np.float32)
    pipelined(5)(floats)
    same = len(set(comm.allgather(floats.tobytes()))) == 1  # one chain of additions per element: one answer
    report(f"pipelined nodes of {per_node}", not wrong and same,
           f"pipelined, nodes of {per_node}: " + (f"differs from MPI at {wrong}" if wrong else
                                                  "bitwise MPI_Allreduce at 5 lengths, 2 dtypes, 3 piece counts")
           + ("" if same else "; ranks disagree on random floats"), wrong=wrong, same_bits=same)
for per_node in divisors(p):
    wrong = [f"{n} {dtype.__name__}" for n in (0, 1, p - 1, 101, 300_007) for dtype in (np.float32, np.int64)
             if differs(n, dtype, lambda x: allreduce_ring_channels(x, comm, per_node))]
    report(f"channels nodes of {per_node}", not wrong, f"ring channels, nodes of {per_node}: "
           + (f"differs from MPI at {wrong}" if wrong else "bitwise MPI_Allreduce at 5 lengths, 2 dtypes"), wrong=wrong)
found = ranks_per_node(comm)
wrong = [n for n in (5, 100_003) if differs(n, np.float32, lambda x: allreduce(x, comm, algorithm="hierarchical"))]
report("registry", not wrong, f"the registry's hierarchical on nodes of {found}: "
       + (f"differs from MPI at {wrong}" if wrong else "bitwise MPI_Allreduce"), per_node=found)
wrong = [n for n in (5, 100_003)
         if differs(n, np.float32, lambda x: allreduce(x, comm, algorithm="hierarchical_pipelined"))]
report("pipelined registry", not wrong, f"the registry's hierarchical_pipelined on nodes of {found}: "
       + (f"differs from MPI at {wrong}" if wrong else "bitwise MPI_Allreduce"), per_node=found)
if p > 1:
    try:
        allreduce_hierarchical(np.zeros(4, np.float32), comm, p + 1)
        said = None
    except ValueError as e:
        said = str(e)
    report("refused", bool(said and "multiple of" in said), f"nodes of {p + 1} on {p} ranks: refused ({said})")
