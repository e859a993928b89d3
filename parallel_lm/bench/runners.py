"""What the bench times: one callable per (op, algorithm), with inputs whose result is known exactly.

Rank r's element i is ``value(i, r)`` in {-1, 0, 1}, so every sum over up to
2,048 ranks is an exact integer even in float16, and each rank computes
the expected result locally: the ``errors`` column counts wrong elements
with no tolerance and no extra communication.
"""
from __future__ import annotations

import numpy as np

from ..comm import (
    ALGORITHMS,
    ALL_GATHER_ALGORITHMS,
    ALLTOALL_ALGORITHMS,
    BROADCAST_ALGORITHMS,
    REDUCE_SCATTER_ALGORITHMS,
    all_gather,
    all_to_all,
    allreduce,
    broadcast,
    chunk_offsets,
    reduce_scatter,
)

TORCH_GLOO = "torch_gloo"
REGISTRIES = {
    "allreduce": list(ALGORITHMS) + [TORCH_GLOO],
    "reduce_scatter": list(REDUCE_SCATTER_ALGORITHMS),
    "all_gather": list(ALL_GATHER_ALGORITHMS),
    "broadcast": list(BROADCAST_ALGORITHMS),
    "all_to_all": list(ALLTOALL_ALGORITHMS),
    "pingpong": ["mpi"],
}


def value(index: np.ndarray, rank: int) -> np.ndarray:
    return (index * 7 + rank * 3) % 3 - 1


def make_input(count: int, dtype, rank: int) -> np.ndarray:
    return value(np.arange(count), rank).astype(dtype)


def runner(op: str, algorithm: str, buf, comm, out=None):
    """A no-argument callable that runs the collective on ``buf`` in place (all-to-all: into ``out``)."""
    if algorithm == TORCH_GLOO:
        from ..parallel.torch_ddp import init_process_group
        from .gloo import gloo_allreduce
        init_process_group(comm, "gloo")
        return lambda: gloo_allreduce(buf)
    if op == "all_to_all":
        return lambda: all_to_all(buf, out, comm, algorithm=algorithm)
    fn = {"allreduce": allreduce, "reduce_scatter": reduce_scatter, "all_gather": all_gather}.get(op)
    if fn is not None:
        return lambda: fn(buf, comm, algorithm=algorithm)
    return lambda: broadcast(buf, comm, root=0, algorithm=algorithm)


def count_errors(op: str, buf, comm) -> int:
    """Elements of the result ``buf`` (after one run from ``make_input``) that differ from the exact result."""
    rank, p = comm.Get_rank(), comm.Get_size()
    index = np.arange(buf.size)
    if op == "allreduce":
        want = sum(value(index, r) for r in range(p))
        got = buf
    elif op == "reduce_scatter":
        offs = chunk_offsets(buf.size, p)
        mine = slice(offs[rank], offs[rank + 1])
        want, got = sum(value(index[mine], r) for r in range(p)), buf[mine]
    elif op == "all_gather":
        offs = chunk_offsets(buf.size, p)
        owner = np.repeat(np.arange(p), np.diff(offs))
        want, got = value(index, owner), buf
    elif op == "all_to_all":  # block s came from rank s: its elements for this rank
        b = buf.size // p
        want, got = value(rank * b + index % max(b, 1), index // max(b, 1)), buf
    else:  # broadcast from rank 0
        want, got = value(index, 0), buf
    return int(np.count_nonzero(got.astype(np.int64) != want))
