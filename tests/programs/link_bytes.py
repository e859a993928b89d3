"""Run on a cluster of namespaces (python -m parallel_lm.cluster run): the bytes each node's link carries
during one all-reduce, read from the kernel's counter on the node's eth0, against the formula.

For each algorithm, after one unmeasured all-reduce (the MPI opens its connections lazily) (``hierarchical``: rings between nodes, one per local rank; ``ring``: one flat ring over
every rank, numbered node by node), local rank 0 of every node reads
/sys/class/net/eth0/statistics/tx_bytes before and after one all-reduce of 8 MiB (between barriers) and the
node's bytes sent are compared with what the algorithm sends across nodes:

- hierarchical, L ranks per node on N nodes: L rings of n/L bytes, each rank sending 2(N-1)/N of its ring's
  bytes: 2(N-1)/N x n per node;
- ring over P = N L ranks: one edge of the ring leaves each node, and each rank sends 2(P-1)/P x n.

What TCP, IP and Ethernet add (headers, acknowledgements, MPI's own messages) puts the counter a few percent
above the payload: a case passes when counter / formula is in [1, 1.05] on every node, taking each node's
least of three all-reduces (other traffic on the link, the launcher's or a retransmission under load, can
only add: once, in CI, one node's link read 1.056). Reports one case per
algorithm (report.py).
"""
from pathlib import Path

import numpy as np
from mpi4py import MPI
from report import case

from parallel_lm.comm import allreduce
from parallel_lm.comm.nodes import ranks_per_node
from parallel_lm.costmodel.formulas import allreduce_ring
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
L = ranks_per_node(comm)
N = p // L
COUNTER = Path("/sys/class/net/eth0/statistics/tx_bytes")
n_bytes = 8 << 20
FORMULA = {"hierarchical": L * allreduce_ring(n_bytes / L, N).beta_bytes,
           "ring": allreduce_ring(n_bytes, p).beta_bytes}


def sent_during(run) -> int | None:
    """Bytes this node's link sent while ``run()`` ran on every rank (local rank 0 reads; others None)."""
    comm.Barrier()
    before = int(COUNTER.read_text()) if rank % L == 0 else None
    comm.Barrier()
    run()
    comm.Barrier()
    return int(COUNTER.read_text()) - before if rank % L == 0 else None


for algorithm, formula in FORMULA.items():
    allreduce(np.ones(n_bytes // 4, dtype=np.float32), comm, algorithm=algorithm)  # connections opened first
    least, correct = None, True
    for _ in range(3):
        x = np.ones(n_bytes // 4, dtype=np.float32)
        mine = sent_during(lambda: allreduce(x, comm, algorithm=algorithm))
        least = mine if least is None or mine is None else min(least, mine)
        correct = correct and bool(comm.allreduce(int(np.all(x == p)), op=MPI.MIN))
    sent = [s for s in comm.gather(least, root=0) or [] if s is not None]
    if rank == 0:
        ratios = [s / formula for s in sent]
        ok = correct and all(1.0 <= r <= 1.05 for r in ratios)
        case(algorithm, ok, f"{algorithm:12s} on {N} nodes x {L}: each link sent "
             f"{', '.join(f'{s / 2**20:.2f}' for s in sent)} MiB for a formula of {formula / 2**20:.2f} MiB "
             f"(x {', '.join(f'{r:.3f}' for r in ratios)})", ratios=ratios, formula_bytes=formula, sent_bytes=sent,
             nodes=N, ranks_per_node=L)
