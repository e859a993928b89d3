"""Communicators that watch the messages a collective sends.

- ``TraceComm`` (``PARALLEL_LM_TRACE=1``): prints every message as one whole
  line on stderr, e.g. ``[trace] rank 1 -> 2  256 B | rank 1 <- 0  256 B  (Sendrecv)``,
  to watch the chunks move.
- ``CountingComm``: counts messages, rounds and bytes (lessons, cost-model tests).
"""
from __future__ import annotations

import os
import sys


def tracing_enabled() -> bool:
    return os.environ.get("PARALLEL_LM_TRACE", "") not in ("", "0")


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
            parts.append(f"-> {dest}  {sendbuf.nbytes} B")
        if recvbuf is not None:
            parts.append(f"<- {source}  {recvbuf.nbytes} B")
        sys.stderr.write(f"[trace] rank {self._rank} " + f" | rank {self._rank} ".join(parts) + f"  ({call})\n")
        sys.stderr.flush()


class CountingComm(ObservedComm):
    """Counts what this rank sends and receives.

    ``sent``/``received``: messages; ``bytes_sent``; ``rounds``: point-to-point
    calls (a Sendrecv is one round, both directions at once) and
    ``round_bytes``: bytes per round summed (the larger direction of a
    Sendrecv). The busiest rank's rounds and round_bytes are the alpha and
    beta coefficients of the cost formulas (tests/test_costmodel.py).
    """

    def __init__(self, comm):
        super().__init__(comm)
        self.sent = self.received = self.bytes_sent = self.rounds = self.round_bytes = 0

    def observe(self, call, sendbuf=None, dest=None, recvbuf=None, source=None):
        self.rounds += 1
        self.round_bytes += max(b.nbytes for b in (sendbuf, recvbuf) if b is not None)
        if sendbuf is not None:
            self.sent += 1
            self.bytes_sent += sendbuf.nbytes
        if recvbuf is not None:
            self.received += 1
