"""Rank 2 raises while the others wait in an all-reduce: the job must end, not hang."""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm import allreduce
from parallel_lm.runtime import start_script

start_script()
if MPI.COMM_WORLD.Get_rank() == 2:
    raise RuntimeError("rank 2 fails on purpose")
allreduce(np.ones(1000, np.float32))
