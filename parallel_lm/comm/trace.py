"""Communicators that watch the messages a collective sends.

- ``TraceComm`` (``PARALLEL_LM_TRACE=1``): prints every message as one whole
  line on stderr, e.g. ``[trace] rank 1 -> 2  256 B | rank 1 <- 0  256 B  (Sendrecv)``,
  to watch the chunks move.
- ``CountingComm``: counts messages, rounds and bytes (lessons, cost-model tests,
  the graded exercises' checkers), and the calls of the library's collectives.
"""
from __future__ import annotations

import sys
from collections import Counter


def nbytes(buf) -> int:
    """Bytes of an mpi4py buffer argument: an array, or a [array, ...] buffer spec; 0 for a pickled object."""
    if isinstance(buf, (list, tuple)) and buf and hasattr(buf[0], "nbytes"):
        buf = buf[0]
    return int(getattr(buf, "nbytes", 0))


class ObservedComm:
    """Delegates to a communicator, calling ``observe`` before each point-to-point call."""

    def __init__(self, comm):
        self._comm = comm

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def observe(self, call: str, sendbuf=None, dest=None, recvbuf=None, source=None) -> None:
        raise NotImplementedError

    def Send(self, buf, dest, tag=0):
        self.observe("Send", sendbuf=buf, dest=dest)
        return self._comm.Send(buf, dest=dest, tag=tag)

    def Recv(self, buf, source, tag=0, status=None):
        self.observe("Recv", recvbuf=buf, source=source)
        return self._comm.Recv(buf, source=source, tag=tag, status=status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        self.observe("Sendrecv", sendbuf=sendbuf, dest=dest, recvbuf=recvbuf, source=source)
        return self._comm.Sendrecv(sendbuf, dest=dest, sendtag=sendtag, recvbuf=recvbuf,
                                   source=source, recvtag=recvtag, status=status)


class TraceComm(ObservedComm):
    def __init__(self, comm):
        super().__init__(comm)
        self._rank = comm.Get_rank()

    def observe(self, call, sendbuf=None, dest=None, recvbuf=None, source=None):
        parts = []
        if sendbuf is not None:
            parts.append(f"-> {dest}  {nbytes(sendbuf)} B")
        if recvbuf is not None:
            parts.append(f"<- {source}  {nbytes(recvbuf)} B")
        sys.stderr.write(f"[trace] rank {self._rank} " + f" | rank {self._rank} ".join(parts) + f"  ({call})\n")
        sys.stderr.flush()


class CountingComm(ObservedComm):
    """Counts what this rank sends and receives.

    ``sent``/``received``: messages; ``bytes_sent``; ``rounds``: point-to-point
    calls (a Sendrecv is one round, both directions at once) and
    ``round_bytes``: bytes per round summed (the larger direction of a
    Sendrecv). The busiest rank's rounds and round_bytes are the alpha and
    beta coefficients of the cost formulas (tests/test_costmodel.py).

    Code that is not ours (a learner's exercise) may send in other ways:
    the non-blocking and the pickling calls count as messages too, though
    not as rounds, and ``calls`` counts each of them and each call of the
    library's collectives by name (``collective_calls``).
    """

    SENDS = {"Isend", "Ssend", "Sendrecv_replace", "send", "isend", "sendrecv"}
    RECEIVES = {"Irecv", "Sendrecv_replace", "recv", "irecv", "sendrecv"}
    COLLECTIVES = {"Allreduce", "Iallreduce", "Reduce", "Bcast", "Ibcast", "Allgather", "Allgatherv", "Reduce_scatter",
                   "Reduce_scatter_block", "Alltoall", "Alltoallv", "Gather", "Scatter", "allreduce", "reduce", "bcast",
                   "allgather", "alltoall", "gather", "scatter"}

    def __init__(self, comm):
        super().__init__(comm)
        self.sent = self.received = self.bytes_sent = self.rounds = self.round_bytes = 0
        self.calls: Counter = Counter()

    def observe(self, call, sendbuf=None, dest=None, recvbuf=None, source=None):
        self.rounds += 1
        self.round_bytes += max(nbytes(b) for b in (sendbuf, recvbuf) if b is not None)
        if sendbuf is not None:
            self.sent += 1
            self.bytes_sent += nbytes(sendbuf)
        if recvbuf is not None:
            self.received += 1

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in self.SENDS | self.RECEIVES | self.COLLECTIVES:
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            if name in self.SENDS:
                self.sent += 1
                self.bytes_sent += nbytes(args[0] if args else kwargs.get("buf", kwargs.get("obj")))
            if name in self.RECEIVES:
                self.received += 1
            return attr(*args, **kwargs)
        return counted

    def collective_calls(self, *names: str) -> int:
        return sum(self.calls[n] for n in names)
