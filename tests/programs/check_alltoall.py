"""Run under ``mpiexec -n K``: all_to_all and all_to_allv, every algorithm and dtype, against MPI_Alltoall(v).

Compares bytes (no tolerance: nothing is added). Blocks of 0, 1, p - 1, 7 and
33,333 elements; variable counts drawn at random with zeros among them. Prints
``FAIL ...`` per mismatch and ``CHECKED n`` on rank 0; exits 1 on any failure.
Then checks that bad calls raise on every rank (``PARALLEL_LM_CHECK=1``
adds the count check).
"""
import os
import sys

import numpy as np
from mpi4py import MPI

from parallel_lm.comm import ALLTOALL_ALGORITHMS, ALLTOALLV_ALGORITHMS, all_to_all, all_to_allv, exchange_counts
from parallel_lm.runtime import install_abort_hook

install_abort_hook()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
failures, checked = [], 0


def data(n, dtype, seed):
    return np.random.default_rng(seed * 1000 + rank).uniform(-100, 100, n).astype(dtype)


def same(got, want, what):
    global checked
    checked += 1
    if got.tobytes() != want.tobytes():
        bad = int(np.flatnonzero(got.view(np.uint8) != want.view(np.uint8))[0]) // got.itemsize
        failures.append(what)
        print(f"FAIL rank {rank}: {what}: element {bad} is {got[bad]}, the library gives {want[bad]}", flush=True)


for seed, block in enumerate([0, 1, max(p - 1, 0), 7, 33_333]):
    for dtype in DTYPES:
        x = data(p * block, dtype, seed)
        want = np.empty_like(x)
        comm.Alltoall(x.view(np.uint8), want.view(np.uint8))
        for name in ALLTOALL_ALGORITHMS:
            got = np.full_like(x, 3)
            before = x.copy()
            all_to_all(x, got, comm, algorithm=name)
            same(got, want, f"all_to_all {name} block {block} {np.dtype(dtype).name}")
            same(x, before, f"all_to_all {name} changed sendbuf")

for seed in range(4):
    rng = np.random.default_rng(seed * 100 + rank)
    high = [1, 4, 50, 3000][seed]
    sendcounts = rng.integers(0, high + 1, p) * (rng.random(p) > 0.3)  # some blocks empty
    for dtype in DTYPES:
        x = data(int(sendcounts.sum()) + 5, dtype, seed)  # room to spare at the end, as MPI allows
        recvcounts = exchange_counts(sendcounts, comm)
        want = np.zeros(int(recvcounts.sum()), dtype)
        sd, rd = np.concatenate([[0], np.cumsum(sendcounts)[:-1]]), np.concatenate([[0], np.cumsum(recvcounts)[:-1]])
        comm.Alltoallv([x, (sendcounts.tolist(), sd.tolist())], [want, (recvcounts.tolist(), rd.tolist())])
        for name in ALLTOALLV_ALGORITHMS:
            got = np.zeros_like(want)
            all_to_allv(x, sendcounts, got, recvcounts, comm, algorithm=name)
            same(got, want, f"all_to_allv {name} seed {seed} {np.dtype(dtype).name}")

if comm.allreduce(len(failures), op=MPI.SUM):
    sys.exit(1)
if rank == 0:
    print(f"CHECKED {checked}", flush=True)


def refused(call, words):
    try:
        call()
    except (ValueError, TypeError) as e:
        if words not in str(e):
            raise AssertionError(f"rank {rank}: message {e} lacks {words!r}") from None
        return
    raise AssertionError(f"rank {rank}: not refused ({words})")


x = np.zeros(2 * p + 1, np.float32)
refused(lambda: all_to_all(x[:2 * p], np.empty(3 * p, np.float32), comm), "equal multiples of")
if p > 1:
    refused(lambda: all_to_all(x, np.empty_like(x), comm), "equal multiples of")
refused(lambda: all_to_all(x[:2 * p], np.empty(2 * p, np.int32), comm), "one dtype")
refused(lambda: all_to_all(x[:2 * p], np.empty(2 * p, np.float32), comm, algorithm="ring"), "valid names: pairwise")
refused(lambda: all_to_allv(x, [1] * (p + 1), x.copy(), [1] * p, comm), "must be")
refused(lambda: all_to_allv(x, [-1] * p, x.copy(), [1] * p, comm), "non-negative")
refused(lambda: all_to_allv(x, [x.size + 1] * p, x.copy(), [1] * p, comm), "more than the buffer")
if p > 1 and os.environ.get("PARALLEL_LM_CHECK") == "1":
    counts = [1] * p
    wrong = [2 if i == (rank + 1) % p else 1 for i in range(p)]  # each rank expects 2 from its right neighbour
    refused(lambda: all_to_allv(x, counts, x.copy(), wrong, comm), f"expects 2 elements from rank {(rank + 1) % p}")
if rank == 0:
    print("REFUSED all bad calls", flush=True)
