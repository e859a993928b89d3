"""Run under mpiexec -n K: count the busiest rank's rounds and bytes for every explicit collective.

Prints one JSON line per (op, algorithm, n_bytes) on rank 0:
{"op", "algorithm", "p", "n_bytes", "rounds", "round_bytes"} (maxima over ranks).
"""
import json

import numpy as np
from mpi4py import MPI

from parallel_lm.comm.collectives import (ALGORITHMS, ALL_GATHER_ALGORITHMS, ALLTOALL_ALGORITHMS, BROADCAST_ALGORITHMS,
                                          REDUCE_SCATTER_ALGORITHMS)
from parallel_lm.comm.trace import CountingComm
from parallel_lm.costmodel.formulas import COSTS
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
registries = {"allreduce": ALGORITHMS, "reduce_scatter": REDUCE_SCATTER_ALGORITHMS,
              "all_gather": ALL_GATHER_ALGORITHMS, "broadcast": BROADCAST_ALGORITHMS, "all_to_all": ALLTOALL_ALGORITHMS}
# 840 = lcm(1..8): every chunk and block is whole for p <= 8; the 2.5 MiB case exercises ring segments.
for count in (840 * 16, 840 * 800):
    for op, registry in registries.items():
        for name, fn in registry.items():
            if name not in COSTS[op]:  # the library's own, and hierarchical (a two-level formula, test_sim.py)
                continue
            counted = CountingComm(comm)
            if op == "all_to_all":
                fn(np.ones(count, np.float32), np.empty(count, np.float32), counted)
            else:
                fn(np.ones(count, np.float32), counted)
            rounds = comm.allreduce(counted.rounds, op=MPI.MAX)
            round_bytes = comm.allreduce(counted.round_bytes, op=MPI.MAX)
            if comm.Get_rank() == 0:
                print(json.dumps(dict(op=op, algorithm=name, p=comm.Get_size(), n_bytes=count * 4,
                                      rounds=rounds, round_bytes=round_bytes)), flush=True)
