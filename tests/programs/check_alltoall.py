"""Run under ``mpiexec -n K``: all_to_all and all_to_allv, every algorithm and dtype, against MPI_Alltoall(v).

Compares bytes (no tolerance: nothing is added). Blocks of 0, 1, p - 1, 7 and
33,333 elements; variable counts drawn at random with zeros among them. Then
bad calls, each of which must raise on every rank (``PARALLEL_LM_CHECK=1``
adds the count check). Reports one case per algorithm (``all_to_all
pairwise``, ``all_to_allv ...``: every size and dtype, bytewise, on every
rank, the send buffer unchanged) and one per bad call (``refused: ...``),
through report.py.
"""
import os

import numpy as np
from mpi4py import MPI
from report import case

from parallel_lm.comm import ALLTOALL_ALGORITHMS, ALLTOALLV_ALGORITHMS, all_to_all, all_to_allv, exchange_counts
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
wrong = {}  # case -> this rank's mismatches


def data(n, dtype, seed):
    return np.random.default_rng(seed * 1000 + rank).uniform(-100, 100, n).astype(dtype)


def same(name, got, want, what):
    wrong.setdefault(name, [])
    if got.tobytes() != want.tobytes():
        bad = int(np.flatnonzero(got.view(np.uint8) != want.view(np.uint8))[0]) // got.itemsize
        wrong[name].append(f"rank {rank}, {what}: element {bad} is {got[bad]}, the library gives {want[bad]}")


def report(name, ok, line, **measured):
    if rank == 0:
        case(name, ok, line, **measured)


for seed, block in enumerate([0, 1, max(p - 1, 0), 7, 33_333]):
    for dtype in DTYPES:
        x = data(p * block, dtype, seed)
        want = np.empty_like(x)
        comm.Alltoall(x.view(np.uint8), want.view(np.uint8))
        for name in ALLTOALL_ALGORITHMS:
            got = np.full_like(x, 3)
            before = x.copy()
            all_to_all(x, got, comm, algorithm=name)
            same(f"all_to_all {name}", got, want, f"block {block} {np.dtype(dtype).name}")
            same(f"all_to_all {name}", x, before, f"block {block}: the send buffer changed")

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
            same(f"all_to_allv {name}", got, want, f"seed {seed} {np.dtype(dtype).name}")

for name in wrong:
    found = [w for ws in comm.allgather(wrong[name]) for w in ws]
    report(name, not found, f"{name} on {p} ranks: " + (found[0] if found else "bytewise the library's, every case"),
           mismatches=len(found))


def refused(name, call, words):
    try:
        call()
        said = None
    except (ValueError, TypeError) as e:
        said = str(e)
    everywhere = comm.allgather(bool(said and words in said))
    report(f"refused: {name}", all(everywhere),
           f"{name}: " + (said or "not refused") + f" (every rank: {all(everywhere)})")


x = np.zeros(2 * p + 1, np.float32)
refused("receive buffer of another size", lambda: all_to_all(x[:2 * p], np.empty(3 * p, np.float32), comm),
        "equal multiples of")
if p > 1:
    refused("uneven blocks", lambda: all_to_all(x, np.empty_like(x), comm), "equal multiples of")
refused("two dtypes", lambda: all_to_all(x[:2 * p], np.empty(2 * p, np.int32), comm), "one dtype")
refused("unknown algorithm", lambda: all_to_all(x[:2 * p], np.empty(2 * p, np.float32), comm, algorithm="ring"),
        "valid names: pairwise")
refused("p + 1 counts", lambda: all_to_allv(x, [1] * (p + 1), x.copy(), [1] * p, comm), "must be")
refused("negative counts", lambda: all_to_allv(x, [-1] * p, x.copy(), [1] * p, comm), "non-negative")
refused("counts past the buffer", lambda: all_to_allv(x, [x.size + 1] * p, x.copy(), [1] * p, comm),
        "more than the buffer")
if p > 1 and os.environ.get("PARALLEL_LM_CHECK") == "1":
    counts = [1] * p
    expects = [2 if i == (rank + 1) % p else 1 for i in range(p)]  # each rank expects 2 from its right neighbour
    refused("counts the senders disagree with", lambda: all_to_allv(x, counts, x.copy(), expects, comm),
            f"expects 2 elements from rank {(rank + 1) % p}")
