"""GPU check: every collective algorithm on CuPy buffers, correctness and busbw.

    PARALLEL_LM_DEVICE=cuda mpiexec -n 4 python benchmarks/gpu_cupy.py

Several ranks may share one GPU. Each algorithm is run on a CuPy buffer
of small integers (exact sums), compared with the library's MPI_Allreduce
of the same data on the host, and timed at 64 MiB. Prints whether the MPI
library is CUDA-aware (if not, parallel_lm stages through host memory).
Exits non-zero on a wrong result.
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.bench.metrics import busbw_GBps
from parallel_lm.bench.timing import time_collective
from parallel_lm.comm import ALGORITHMS, allreduce
from parallel_lm.comm.buffers import cuda_aware_mpi, xp
from parallel_lm.runtime import check, start_script, print0

start_script()
cp = xp()
check(cp is not np, "no usable CUDA device (set PARALLEL_LM_DEVICE=cuda on a GPU machine)")
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
cp.cuda.Device(rank % cp.cuda.runtime.getDeviceCount()).use()
print0(f"{p} ranks, CUDA-aware MPI: {cuda_aware_mpi()}")
for n in (0, 1, p - 1, 101, 1 << 24):
    host = np.random.default_rng(rank).integers(-3, 4, n).astype(np.float32)
    want = host.copy()
    comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
    for name in ALGORITHMS:
        buf = cp.asarray(host)
        allreduce(buf, comm, algorithm=name)
        check(np.array_equal(cp.asnumpy(buf), want), f"{name} on CuPy, n={n}: wrong result")
        if n == 1 << 24:
            src = cp.asarray(host)
            t, _ = time_collective(comm, lambda: allreduce(buf, comm, algorithm=name),
                                   lambda: buf.__setitem__(slice(None), src), warmup=2, iters=10)
            print0(f"{name:>20} 64 MiB float32 on CuPy: {t * 1e3:8.2f} ms  busbw {busbw_GBps('allreduce', n * 4, t, p):6.2f} GB/s")
print0("gpu check OK")
