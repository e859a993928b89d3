"""The public collectives: validate, pick the algorithm, handle device buffers, run.

    from parallel_lm.comm import allreduce, ALGORITHMS
    allreduce(buf, comm, algorithm="ring")   # in place; every rank gets the same bits

Each call goes through ``_run``: check the buffer (clear errors naming the
fix), optionally check that all ranks agree (``PARALLEL_LM_CHECK=1``),
optionally trace messages (``PARALLEL_LM_TRACE=1``), optionally delay
them like a slower network (``PARALLEL_LM_NETEM``, netem.py), then run the
algorithm on the buffer itself, or, for a GPU buffer and an MPI library
that is not CUDA-aware, on a host copy that is written back.
"""
from __future__ import annotations

import os

import numpy as np

from .. import faults
from .buffers import SUPPORTED_DTYPES, StreamSyncComm, cuda_aware_mpi, is_device_array
from .collectives import ALGORITHMS, ALL_GATHER_ALGORITHMS, BROADCAST_ALGORITHMS, REDUCE_SCATTER_ALGORITHMS
from .collectives.mpi import has_mpi_datatype
from .topology import chunk_offsets
from .trace import TraceComm, tracing_enabled

_KINDS = {  # operation name -> (registry, index used by the consistency check)
    "allreduce": (ALGORITHMS, 1),
    "reduce_scatter": (REDUCE_SCATTER_ALGORITHMS, 2),
    "all_gather": (ALL_GATHER_ALGORITHMS, 3),
    "broadcast": (BROADCAST_ALGORITHMS, 4),
}


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def resolve(kind: str, algorithm: str):
    registry = _KINDS[kind][0]
    try:
        return registry[algorithm]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {kind} algorithm {algorithm!r}; valid names: {', '.join(registry)}") from None


def validate(buf, kind: str = "allreduce", algorithm: str = "ring") -> None:
    """Raise a TypeError/ValueError naming the fix when ``buf`` cannot be reduced in place."""
    if not (isinstance(buf, np.ndarray) or is_device_array(buf)):
        hint = (" (a torch tensor: pass parallel_lm.comm.buffers.as_array(tensor), a zero-copy view)"
                if type(buf).__module__.startswith("torch") else "")
        raise TypeError(f"{kind} needs a 1-D NumPy or CuPy array, got {type(buf).__name__}{hint}")
    if buf.ndim != 1:
        raise ValueError(f"{kind} needs a 1-D array, got shape {tuple(buf.shape)}: pass buf.reshape(-1), "
                         "which is a view of a contiguous array, so the result lands in buf")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{kind} works in place on contiguous memory and this array is a strided view: "
                         "reduce a copy (tmp = np.ascontiguousarray(buf)), then write it back (buf[...] = tmp)")
    if not buf.flags.writeable:
        raise ValueError(f"{kind} writes its result into buf, which is read-only: pass a writeable copy")
    if buf.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{kind} does not support dtype {buf.dtype}; use one of "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (e.g. buf.astype(np.float32))")
    if algorithm == "mpi" and not has_mpi_datatype(buf.dtype):
        raise ValueError(f"this MPI library has no datatype for {buf.dtype}, so algorithm 'mpi' cannot reduce it; "
                         "use an explicit algorithm such as 'ring', which reduces with NumPy")


def check_consistent(buf, comm, kind: str, algorithm: str, root: int = 0) -> None:
    """Raise on every rank unless all ranks passed the same length, dtype, operation, algorithm and root.

    Costs one small library all-reduce, so it is opt-in: ``PARALLEL_LM_CHECK=1``.
    """
    registry, kind_id = _KINDS[kind]
    fields = np.array([buf.size, buf.dtype.num, kind_id, list(registry).index(algorithm), root], dtype=np.int64)
    both = np.concatenate([fields, -fields])
    from mpi4py import MPI
    comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    high, low = both[: fields.size], -both[fields.size:]
    if (high != low).any():
        names = ["length", "dtype number", "operation", "algorithm", "root"]
        diffs = ", ".join(f"{name} {lo}..{hi}" for name, lo, hi in zip(names, low, high) if lo != hi)
        raise ValueError(f"ranks called {kind} inconsistently ({diffs}); this rank passed "
                         f"length {buf.size}, dtype {buf.dtype}, algorithm {algorithm!r}, root {root}")


def _run(kind: str, buf, comm, algorithm: str, **kwargs):
    """Validate, check, trace, stage; returns the communicator used (for its rank and size)."""
    fn = resolve(kind, algorithm)
    validate(buf, kind, algorithm)
    comm = _world() if comm is None else comm
    if os.environ.get("PARALLEL_LM_CHECK", "") not in ("", "0"):
        check_consistent(buf, comm, kind, algorithm, kwargs.get("root", 0))
    run_on = faults.in_collective(TraceComm(comm) if tracing_enabled() else comm)
    if not is_device_array(buf):
        fn(buf, run_on, **kwargs)
    elif cuda_aware_mpi():
        fn(buf, StreamSyncComm(run_on), **kwargs)
    else:
        host = buf.get()  # stage through host memory: this MPI library cannot read device pointers
        fn(host, run_on, **kwargs)
        buf.set(host)
    return comm


def allreduce(buf, comm=None, algorithm: str = "ring"):
    """Sum ``buf`` over all ranks of ``comm``, in place; returns ``buf``.

    Every rank ends with the same bytes. ``algorithm`` is any name in ALGORITHMS.
    """
    _run("allreduce", buf, comm, algorithm)
    return buf


def allreduce_mean(buf, comm=None, algorithm: str = "ring"):
    """All-reduce then divide by the number of ranks (floating-point buffers only)."""
    if getattr(buf, "dtype", None) is not None and buf.dtype.kind != "f":
        raise TypeError(f"allreduce_mean needs a floating-point buffer, got {buf.dtype}; "
                        "use allreduce for a sum of integers")
    buf /= _run("allreduce", buf, comm, algorithm).Get_size()
    return buf


def reduce_scatter(buf, comm=None, algorithm: str = "ring"):
    """Sum ``buf`` over ranks; returns this rank's chunk (``topology.chunk_offsets``), a view of ``buf``.

    Outside that chunk ``buf`` is left holding partial sums.
    """
    comm = _run("reduce_scatter", buf, comm, algorithm)
    offs = chunk_offsets(buf.size, comm.Get_size())
    return buf[offs[comm.Get_rank()]:offs[comm.Get_rank() + 1]]


def all_gather(buf, comm=None, algorithm: str = "ring"):
    """Each rank's own chunk of ``buf`` goes to everyone; returns ``buf``, now complete on every rank."""
    _run("all_gather", buf, comm, algorithm)
    return buf


def broadcast(buf, comm=None, root: int = 0, algorithm: str = "binomial"):
    """Copy the root's ``buf`` into every rank's ``buf``; returns ``buf``."""
    size = (_world() if comm is None else comm).Get_size()
    if not (isinstance(root, int) and 0 <= root < size):
        raise ValueError(f"broadcast root {root!r} is not a rank of this communicator (0..{size - 1})")
    _run("broadcast", buf, comm, algorithm, root=root)
    return buf
