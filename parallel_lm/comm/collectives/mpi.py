"""The MPI library's own collectives: the baseline every explicit algorithm is measured against.

MPI_Allreduce, MPI_Reduce_scatter, MPI_Allgatherv and MPI_Bcast, called
in place on the same buffers, and MPI_Alltoall(v) on the send and receive
buffers seen as bytes (nothing is reduced, so any dtype moves, float16
included, in every library). The library picks its own algorithm by
message size and p (MPICH: recursive doubling for short, Rabenseifner for
long all-reduces); its cost is whichever of those formulas it picked.

Restrictions: the dtype must have an MPI datatype in this library (all
five supported dtypes do in MPICH 4+; float16 may be missing elsewhere),
and the library's summation order is its own, so results can differ in
the last bits from the explicit algorithms (and, for some libraries,
between ranks).
"""
from __future__ import annotations

import numpy as np

from ..buffers import array_module
from ..topology import chunk_offsets
from ..workspace import scratch


def _mpi():
    from mpi4py import MPI
    return MPI


def has_mpi_datatype(dtype) -> bool:
    """Whether this MPI library can reduce ``dtype`` itself."""
    from mpi4py.util.dtlib import from_numpy_dtype
    try:
        return from_numpy_dtype(dtype) != _mpi().DATATYPE_NULL
    except (KeyError, ValueError, TypeError):
        return False


def allreduce_mpi(buf, comm):
    MPI = _mpi()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf


def reduce_scatter_mpi(buf, comm):
    offs = chunk_offsets(buf.size, comm.Get_size())
    counts = [offs[i + 1] - offs[i] for i in range(comm.Get_size())]
    rank = comm.Get_rank()
    mine = buf[offs[rank]:offs[rank + 1]]
    out = scratch(counts[rank], buf.dtype, array_module(buf))
    comm.Reduce_scatter(buf, out, recvcounts=counts, op=_mpi().SUM)
    mine[...] = out
    return mine


def all_gather_mpi(buf, comm):
    offs = chunk_offsets(buf.size, comm.Get_size())
    counts = [offs[i + 1] - offs[i] for i in range(comm.Get_size())]
    comm.Allgatherv(_mpi().IN_PLACE, [buf, (counts, offs[:-1])])
    return buf


def broadcast_mpi(buf, comm, root: int = 0):
    comm.Bcast(buf, root=root)
    return buf


def all_to_all_mpi(sendbuf, recvbuf, comm):
    comm.Alltoall(sendbuf.view(np.uint8), recvbuf.view(np.uint8))
    return recvbuf


def all_to_allv_mpi(sendbuf, sendcounts, recvbuf, recvcounts, comm):
    def spec(buf, counts):
        nbytes = np.asarray(counts, dtype=np.int64) * buf.itemsize
        displs = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
        return [buf.view(np.uint8), (nbytes.tolist(), displs.tolist()), _mpi().BYTE]
    comm.Alltoallv(spec(sendbuf, sendcounts), spec(recvbuf, recvcounts))
    return recvbuf
