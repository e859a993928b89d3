"""Rank 1 passes a longer buffer; with PARALLEL_LM_CHECK=1 every rank must raise, not hang."""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm import allreduce
from parallel_lm.runtime import start_script

start_script()
rank = MPI.COMM_WORLD.Get_rank()
try:
    allreduce(np.ones(11 if rank == 1 else 10, np.float32), algorithm="ring")
except ValueError as e:
    print(f"rank {rank} caught: {e}", flush=True)
else:
    raise SystemExit("mismatch not detected")
