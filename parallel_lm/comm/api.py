"""The public collectives: validate, pick the algorithm, handle device buffers, run.

    from parallel_lm.comm import allreduce, ALGORITHMS
    allreduce(buf, comm, algorithm="ring")   # in place; every rank gets the same bits
    all_to_all(sendbuf, recvbuf, comm, algorithm="bruck")   # block j of sendbuf to rank j

Each call goes through ``_run``: check the buffer (clear errors naming the
fix), optionally check that all ranks agree (``settings.check``, set by
``PARALLEL_LM_CHECK=1``), optionally trace messages (``settings.trace``,
``PARALLEL_LM_TRACE=1``), then run the
algorithm on the buffer itself, or, for a GPU buffer and an MPI library
that is not CUDA-aware, on a host copy that is written back. A tensor of
another framework goes through DLPack (``foreign.py``): in place where its
memory may be written (torch), else on an aligned copy returned as a new
tensor of its framework (JAX, TensorFlow).
"""
from __future__ import annotations

import numpy as np

from . import settings
from .buffers import SUPPORTED_DTYPES, StreamSyncComm, cuda_aware_mpi, is_device_array
from .collectives import (
    ALGORITHMS,
    ALL_GATHER_ALGORITHMS,
    ALLTOALL_ALGORITHMS,
    ALLTOALLV_ALGORITHMS,
    BROADCAST_ALGORITHMS,
    REDUCE_SCATTER_ALGORITHMS,
)
from .collectives.mpi import has_mpi_datatype
from .foreign import back_to, host_view
from .topology import chunk_offsets
from .trace import TraceComm

_KINDS = {  # operation name -> (registry, index used by the consistency check)
    "allreduce": (ALGORITHMS, 1),
    "reduce_scatter": (REDUCE_SCATTER_ALGORITHMS, 2),
    "all_gather": (ALL_GATHER_ALGORITHMS, 3),
    "broadcast": (BROADCAST_ALGORITHMS, 4),
    "all_to_all": (ALLTOALL_ALGORITHMS, 5),
    "all_to_allv": (ALLTOALLV_ALGORITHMS, 6),
}
_MOVES_ONLY = ("all_to_all", "all_to_allv")  # nothing is reduced: the library moves any dtype as bytes


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def resolve(kind: str, algorithm: str):
    registry = _KINDS[kind][0]
    try:
        return registry[algorithm]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {kind} algorithm {algorithm!r}; valid names: {', '.join(registry)}") from None


def validate(buf, kind: str = "allreduce", algorithm: str = "ring", written: bool = True) -> None:
    """Raise a TypeError/ValueError naming the fix when ``buf`` cannot be used (``written``: in place)."""
    if not (isinstance(buf, np.ndarray) or is_device_array(buf)):
        raise TypeError(f"{kind} needs a 1-D NumPy or CuPy array, or a tensor that exports DLPack (torch, JAX, "
                        f"TensorFlow), got {type(buf).__name__}")
    if buf.ndim != 1:
        raise ValueError(f"{kind} needs a 1-D array, got shape {tuple(buf.shape)}: pass buf.reshape(-1), "
                         "which is a view of a contiguous array, so the result lands in buf")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{kind} works in place on contiguous memory and this array is a strided view: "
                         "reduce a copy (tmp = np.ascontiguousarray(buf)), then write it back (buf[...] = tmp)")
    if written and not buf.flags.writeable:
        raise ValueError(f"{kind} writes its result into buf, which is read-only: pass a writeable copy")
    if buf.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{kind} does not support dtype {buf.dtype}; use one of "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (e.g. buf.astype(np.float32))")
    if algorithm == "mpi" and kind not in _MOVES_ONLY and not has_mpi_datatype(buf.dtype):
        raise ValueError(f"this MPI library has no datatype for {buf.dtype}, so algorithm 'mpi' cannot reduce it; "
                         "use an explicit algorithm such as 'ring', which reduces with NumPy")


def check_consistent(buf, comm, kind: str, algorithm: str, root: int = 0, length: int | None = None) -> None:
    """Raise on every rank unless all ranks passed the same length, dtype, operation, algorithm and root.

    Costs one small library all-reduce, so it is opt-in: ``settings.check`` (``PARALLEL_LM_CHECK=1``).
    """
    registry, kind_id = _KINDS[kind]
    length = buf.size if length is None else length
    fields = np.array([length, buf.dtype.num, kind_id, list(registry).index(algorithm), root], dtype=np.int64)
    both = np.concatenate([fields, -fields])
    from mpi4py import MPI
    comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    high, low = both[: fields.size], -both[fields.size:]
    if (high != low).any():
        names = ["length", "dtype number", "operation", "algorithm", "root"]
        diffs = ", ".join(f"{name} {lo}..{hi}" for name, lo, hi in zip(names, low, high) if lo != hi)
        raise ValueError(f"ranks called {kind} inconsistently ({diffs}); this rank passed "
                         f"length {length}, dtype {buf.dtype}, algorithm {algorithm!r}, root {root}")


def _execute(call, comm, bufs) -> None:
    """``call(comm, *bufs)`` with tracing; the last buffer is the result.

    GPU buffers go to the algorithm as they are when the MPI library is
    CUDA-aware; otherwise through host copies, and the result is written back.
    """
    run_on = TraceComm(comm) if settings.current().trace else comm
    if not is_device_array(bufs[-1]):
        call(run_on, *bufs)
    elif cuda_aware_mpi():
        call(StreamSyncComm(run_on), *bufs)
    else:
        host = [b.get() for b in bufs]  # stage through host memory: this MPI library cannot read device pointers
        call(run_on, *host)
        bufs[-1].set(host[-1])


def _run(kind: str, buf, comm, algorithm: str, part=None, mean: bool = False, **kwargs):
    """Validate, check, trace, stage; returns what the collective returns. ``part``: (array, communicator) ->
    the slice of the array it returns (default all of it); ``mean``: divide by the ranks after the sum."""
    fn = resolve(kind, algorithm)
    array, own = host_view(buf, kind)
    validate(array, kind, algorithm)
    if mean and array.dtype.kind != "f":
        raise TypeError(f"allreduce_mean needs a floating-point buffer, got {array.dtype}; "
                        "use allreduce for a sum of integers")
    comm = _world() if comm is None else comm
    if settings.current().check:
        check_consistent(array, comm, kind, algorithm, kwargs.get("root", 0))
    _execute(lambda c, b: fn(b, c, **kwargs), comm, (array,))
    if mean:
        array /= comm.Get_size()
    take = part or (lambda a, c: a)
    return take(buf, comm) if own else back_to(buf, take(array, comm))


def allreduce(buf, comm=None, algorithm: str = "ring"):
    """Sum ``buf`` over all ranks of ``comm``, in place; returns ``buf`` (a new tensor for an immutable
    framework's: JAX, TensorFlow).

    Every rank ends with the same bytes. ``algorithm`` is any name in ALGORITHMS.
    """
    return _run("allreduce", buf, comm, algorithm)


def allreduce_mean(buf, comm=None, algorithm: str = "ring"):
    """All-reduce then divide by the number of ranks (floating-point buffers only)."""
    return _run("allreduce", buf, comm, algorithm, mean=True)


def _chunk(a, comm):
    offs = chunk_offsets(a.shape[0], comm.Get_size())
    return a[offs[comm.Get_rank()]:offs[comm.Get_rank() + 1]]


def reduce_scatter(buf, comm=None, algorithm: str = "ring"):
    """Sum ``buf`` over ranks; returns this rank's chunk (``topology.chunk_offsets``), a view of ``buf``.

    Outside that chunk ``buf`` is left holding partial sums.
    """
    return _run("reduce_scatter", buf, comm, algorithm, part=_chunk)


def all_gather(buf, comm=None, algorithm: str = "ring"):
    """Each rank's own chunk of ``buf`` goes to everyone; returns ``buf``, now complete on every rank."""
    return _run("all_gather", buf, comm, algorithm)


def broadcast(buf, comm=None, root: int = 0, algorithm: str = "binomial"):
    """Copy the root's ``buf`` into every rank's ``buf``; returns ``buf``."""
    size = (_world() if comm is None else comm).Get_size()
    if not (isinstance(root, int) and 0 <= root < size):
        raise ValueError(f"broadcast root {root!r} is not a rank of this communicator (0..{size - 1})")
    return _run("broadcast", buf, comm, algorithm, root=root)


def _pair(kind: str, sendbuf, recvbuf, algorithm: str):
    fn = resolve(kind, algorithm)
    validate(sendbuf, kind, algorithm, written=False)
    validate(recvbuf, kind, algorithm)
    if sendbuf.dtype != recvbuf.dtype or is_device_array(sendbuf) != is_device_array(recvbuf):
        raise TypeError(f"{kind} needs sendbuf and recvbuf of one dtype on one device, got "
                        f"{sendbuf.dtype} and {recvbuf.dtype} ({type(sendbuf).__name__}, {type(recvbuf).__name__})")
    return fn


def all_to_all(sendbuf, recvbuf, comm=None, algorithm: str = "pairwise"):
    """MPI_Alltoall: block j of ``sendbuf`` goes to rank j; block i of ``recvbuf`` came from rank i.

    Both buffers hold p blocks of ``sendbuf.size // p`` elements; returns
    ``recvbuf``. ``algorithm`` is any name in ALLTOALL_ALGORITHMS.
    """
    fn = _pair("all_to_all", sendbuf, recvbuf, algorithm)
    comm = _world() if comm is None else comm
    p = comm.Get_size()
    if sendbuf.size != recvbuf.size or sendbuf.size % p:
        raise ValueError(f"all_to_all needs sendbuf and recvbuf of p blocks each, one per rank (p = {p}), got "
                         f"{sendbuf.size} and {recvbuf.size} elements: use sizes that are equal multiples of {p}, "
                         "or all_to_allv for blocks of different sizes")
    if settings.current().check:
        check_consistent(sendbuf, comm, "all_to_all", algorithm)
    _execute(lambda c, s, r: fn(s, r, c), comm, (sendbuf, recvbuf))
    return recvbuf


def _counts(counts, p: int, name: str, buf) -> list[int]:
    values = np.asarray(counts)
    if values.shape != (p,) or values.dtype.kind not in "iu" or (values < 0).any():
        raise ValueError(f"all_to_allv: {name} must be {p} non-negative integers, one per rank, got {counts!r}")
    if values.sum() > buf.size:
        raise ValueError(f"all_to_allv: {name} add up to {values.sum()} elements, more than the buffer's {buf.size}")
    return [int(v) for v in values]


def all_to_allv(sendbuf, sendcounts, recvbuf, recvcounts, comm=None, algorithm: str = "pairwise"):
    """MPI_Alltoallv with blocks one after another: rank j gets ``sendcounts[j]`` elements of
    ``sendbuf`` (after those for ranks 0..j-1); ``recvbuf`` gets ``recvcounts[i]`` from rank i.

    ``recvcounts`` must be what the senders send: ``exchange_counts`` gets it.
    With ``PARALLEL_LM_CHECK=1`` a mismatch is reported by rank and count.
    Returns ``recvbuf``.
    """
    fn = _pair("all_to_allv", sendbuf, recvbuf, algorithm)
    comm = _world() if comm is None else comm
    p = comm.Get_size()
    sendcounts = _counts(sendcounts, p, "sendcounts", sendbuf)
    recvcounts = _counts(recvcounts, p, "recvcounts", recvbuf)
    if settings.current().check:
        check_consistent(sendbuf, comm, "all_to_allv", algorithm, length=0)
        sent = np.empty(p, np.int64)
        comm.Alltoall(np.asarray(sendcounts, np.int64), sent)
        wrong = [i for i in range(p) if sent[i] != recvcounts[i]]
        if wrong:
            i = wrong[0]
            raise ValueError(f"all_to_allv: rank {comm.Get_rank()} expects {recvcounts[i]} elements from rank {i}, "
                             f"which sends {sent[i]}: pass recvcounts = exchange_counts(sendcounts)")
    _execute(lambda c, s, r: fn(s, sendcounts, r, recvcounts, c), comm, (sendbuf, recvbuf))
    return recvbuf


def exchange_counts(sendcounts, comm=None, algorithm: str = "pairwise") -> np.ndarray:
    """What each rank will send this one: the all-to-all of ``sendcounts`` (p integers), as int64."""
    comm = _world() if comm is None else comm
    send = np.asarray(sendcounts, dtype=np.int64).copy()
    if send.shape != (comm.Get_size(),):
        raise ValueError(f"exchange_counts needs one count per rank ({comm.Get_size()}), got shape {send.shape}")
    return all_to_all(send, np.empty_like(send), comm, algorithm)
