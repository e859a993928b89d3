"""Run under ``mpiexec -n K``: every collective x algorithm x dtype x length against the MPI library.

Reports one case per collective and algorithm (report.py: ``allreduce ring``,
``reduce_scatter ...``, ``all_gather ...``, ``broadcast ...``, ``allreduce_mean
ring``), each over every dtype and length on every rank, with the number of
checks and the first mismatch. ``--quick``: fewer lengths. ``--unequal-nodes``: leave out the all-reduces
built on nodes (hierarchical ones, ring channels), which refuse nodes of different sizes (tests/test_cluster.py runs 2 + 1 + 2 ranks).
"""
import hashlib
import sys

import numpy as np
from mpi4py import MPI
from report import case

from parallel_lm.comm import (ALGORITHMS, ALL_GATHER_ALGORITHMS, BROADCAST_ALGORITHMS, NODE_ALGORITHMS,
                              REDUCE_SCATTER_ALGORITHMS, all_gather, allreduce, allreduce_mean, broadcast, chunk_offsets, reduce_scatter)
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
quick = "--quick" in sys.argv
ALLREDUCES = [a for a in ALGORITHMS if a not in NODE_ALGORITHMS or "--unequal-nodes" not in sys.argv]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
# 262,147 (odd, so chunks are uneven): 0.5-2 MiB per buffer, past every eager limit (MPICH's and Open MPI's are
# 16-64 KiB), so the library and ours move it by rendezvous; a million elements cost 4x the time for nothing more
LENGTHS = sorted({0, 1, max(p - 1, 0), 101} | (set() if quick else {262_147}))
wrong, checked = {}, {}  # case -> this rank's mismatches, and how many checks it ran


def count(name):
    wrong.setdefault(name, [])
    checked[name] = checked.get(name, 0) + 1


def fail(name, what):
    wrong.setdefault(name, []).append(f"rank {rank}: {what}")


def data(n, dtype, seed, integer_valued=False):
    rng = np.random.default_rng(seed * 1000 + rank)
    if np.dtype(dtype).kind == "i" or integer_valued:
        return rng.integers(-8, 9, n).astype(dtype)
    return rng.uniform(-1, 1, n).astype(dtype)


def library_sum(x):
    out = x.copy()
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
    return out


def close_to_library(name, got, x, what):
    """Exact for integers; for floats within the rounding bound of any summation order."""
    count(name)
    want = library_sum(x)
    if x.dtype.kind == "i":
        ok = np.array_equal(got, want)
    else:
        abs_sum = np.abs(x.astype(np.float64))
        comm.Allreduce(MPI.IN_PLACE, abs_sum, op=MPI.SUM)
        # |error of one order| <= (p-1) u sum|x| (Higham), two orders differ by at most twice that.
        bound = (p - 1) * np.finfo(x.dtype).eps * abs_sum + np.finfo(x.dtype).tiny
        ok = bool(np.all(np.abs(got.astype(np.float64) - want.astype(np.float64)) <= bound))
    if not ok:
        fail(name, f"{what}: differs from MPI_Allreduce")


def same_on_all_ranks(name, buf, what):
    count(name)
    digest = hashlib.sha1(buf.tobytes()).hexdigest()
    if len(set(comm.allgather(digest))) != 1:
        fail(name, f"{what}: ranks hold different bytes")


for n in LENGTHS:
    offs = chunk_offsets(n, p)
    mine = slice(offs[rank], offs[rank + 1])
    for dtype in DTYPES:
        name = np.dtype(dtype).name
        for algo in ALLREDUCES:
            for integer_valued in (False, True):
                x = data(n, dtype, 1, integer_valued)
                buf = x.copy()
                out = allreduce(buf, comm, algorithm=algo)
                key, what = f"allreduce {algo}", f"{name} n={n}{' int-valued' if integer_valued else ''}"
                if out is not buf:
                    fail(key, f"{what}: did not return buf")
                if integer_valued and x.dtype.kind == "f" and not np.array_equal(buf, library_sum(x)):
                    fail(key, f"{what}: exact sum of small integers differs")
                close_to_library(key, buf, x, what)
                if algo != "mpi":
                    same_on_all_ranks(key, buf, what)
        for algo in REDUCE_SCATTER_ALGORITHMS:
            x = data(n, dtype, 2)
            chunk = reduce_scatter(x.copy(), comm, algorithm=algo)
            count(f"reduce_scatter {algo}")
            want = library_sum(x)[mine]
            ok = np.array_equal(chunk, want) if x.dtype.kind == "i" else np.allclose(
                chunk.astype(np.float64), want.astype(np.float64), rtol=0, atol=p * p * np.finfo(dtype).eps)
            if chunk.size != offs[rank + 1] - offs[rank] or not ok:
                fail(f"reduce_scatter {algo}", f"{name} n={n}")
        for algo in ALL_GATHER_ALGORITHMS:
            full = np.concatenate([data(offs[r + 1] - offs[r], dtype, 3 + r) for r in range(p)]) if n else np.zeros(0, dtype)
            buf = np.full(n, -7, dtype=dtype)
            buf[mine] = full[mine]
            count(f"all_gather {algo}")
            # every rank generated the same full vector from seeds 3 + r on rank r? no: data() mixes in
            # this rank, so build the expectation from what each rank contributes instead.
            want = np.concatenate(comm.allgather(full[mine].copy())) if n else full
            if not np.array_equal(all_gather(buf, comm, algorithm=algo), want):
                fail(f"all_gather {algo}", f"{name} n={n}")
        for algo in BROADCAST_ALGORITHMS:
            for root in sorted({0, p - 1}):
                x = data(n, dtype, 4)
                want = comm.bcast(x if rank == root else None, root=root)
                count(f"broadcast {algo}")
                if not np.array_equal(broadcast(x, comm, root=root, algorithm=algo), want):
                    fail(f"broadcast {algo}", f"root={root} {name} n={n}")

x = data(1000, np.float64, 5)
want = library_sum(x) / p
count("allreduce_mean ring")
if not np.allclose(allreduce_mean(x.copy(), comm, "ring"), want, rtol=1e-12, atol=1e-12):
    fail("allreduce_mean ring", "float64")

for name in wrong:
    found = [w for ws in comm.allgather(wrong[name]) for w in ws]
    if rank == 0:
        case(name, not found,
             f"{name} on {p} ranks, {checked[name]} checks: " + (found[0] if found else "as the library"),
             checks=checked[name], mismatches=len(found))
