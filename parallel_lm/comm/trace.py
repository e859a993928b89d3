"""``PARALLEL_LM_TRACE=1``: print every message a collective sends, to watch the chunks move.

Wraps a communicator; each point-to-point call prints one whole line to
stderr, e.g. ``[trace] rank 1 -> 2  256 B | rank 1 <- 0  256 B  (Sendrecv)``.
"""
from __future__ import annotations

import os
import sys


def tracing_enabled() -> bool:
    return os.environ.get("PARALLEL_LM_TRACE", "") not in ("", "0")


class TraceComm:
    def __init__(self, comm):
        self._comm = comm
        self._rank = comm.Get_rank()

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def _say(self, text: str) -> None:
        sys.stderr.write(f"[trace] rank {self._rank} {text}\n")
        sys.stderr.flush()

    def Send(self, buf, dest, tag=0):
        self._say(f"-> {dest}  {buf.nbytes} B  (Send)")
        return self._comm.Send(buf, dest=dest, tag=tag)

    def Recv(self, buf, source, tag=0, status=None):
        self._say(f"<- {source}  {buf.nbytes} B  (Recv)")
        return self._comm.Recv(buf, source=source, tag=tag, status=status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        self._say(f"-> {dest}  {sendbuf.nbytes} B | rank {self._rank} <- {source}  {recvbuf.nbytes} B  (Sendrecv)")
        return self._comm.Sendrecv(sendbuf, dest=dest, sendtag=sendtag, recvbuf=recvbuf,
                                   source=source, recvtag=recvtag, status=status)


class CountingComm:
    """Wraps a communicator and counts what this rank sends and receives.

    ``sent``/``received``: messages; ``bytes_sent``; ``rounds``: point-to-point
    calls (a Sendrecv is one round, both directions at once) and
    ``round_bytes``: bytes per round summed (the larger direction of a
    Sendrecv). The busiest rank's rounds and round_bytes are the alpha and
    beta coefficients of the cost formulas (tests/test_costmodel.py).
    """

    def __init__(self, comm):
        self._comm = comm
        self.sent = self.received = self.bytes_sent = self.rounds = self.round_bytes = 0

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def _count(self, sendbuf=None, recvbuf=None):
        self.rounds += 1
        self.round_bytes += max(b.nbytes for b in (sendbuf, recvbuf) if b is not None)
        if sendbuf is not None:
            self.sent += 1
            self.bytes_sent += sendbuf.nbytes
        if recvbuf is not None:
            self.received += 1

    def Send(self, buf, dest, tag=0):
        self._count(sendbuf=buf)
        return self._comm.Send(buf, dest=dest, tag=tag)

    def Recv(self, buf, source, tag=0, status=None):
        self._count(recvbuf=buf)
        return self._comm.Recv(buf, source=source, tag=tag, status=status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        self._count(sendbuf=sendbuf, recvbuf=recvbuf)
        return self._comm.Sendrecv(sendbuf, dest=dest, sendtag=sendtag, recvbuf=recvbuf,
                                   source=source, recvtag=recvtag, status=status)
