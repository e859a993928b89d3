"""A communicator that counts what the code it is handed sends: the checker's view of cost.

``CountingComm(comm)`` behaves as ``comm`` (every attribute is passed
through) and counts, per rank, the point-to-point messages sent and
received, the bytes sent, and the calls of each collective, so a checker
can compare a learner's algorithm with its formula (the ring sends
2(p-1) messages, a binomial tree's root receives ceil(lg p)).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

SENDS = {"Send", "Isend", "Ssend", "Sendrecv", "Sendrecv_replace", "send", "isend", "ssend", "sendrecv"}
RECEIVES = {"Recv", "Irecv", "Sendrecv", "Sendrecv_replace", "recv", "irecv", "sendrecv"}
COLLECTIVES = {"Allreduce", "Reduce", "Bcast", "Allgather", "Allgatherv", "Reduce_scatter", "Reduce_scatter_block",
               "Alltoall", "Alltoallv", "Gather", "Scatter", "allreduce", "reduce", "bcast", "allgather",
               "alltoall", "gather", "scatter", "Iallreduce", "Ibcast"}


def nbytes(buf) -> int:
    """Bytes of an mpi4py buffer argument: an array, or [array, ...] / (array, ...); 0 for a pickled object."""
    if isinstance(buf, (list, tuple)) and buf and hasattr(buf[0], "nbytes"):
        buf = buf[0]
    return int(buf.nbytes) if isinstance(buf, np.ndarray) else 0


class CountingComm:
    def __init__(self, comm):
        self._comm = comm
        self.sent = self.received = self.bytes_sent = 0
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in SENDS | RECEIVES | COLLECTIVES:
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            if name in SENDS:
                self.sent += 1
                self.bytes_sent += nbytes(args[0] if args else kwargs.get("buf", kwargs.get("sendbuf")))
            if name in RECEIVES:
                self.received += 1
            return attr(*args, **kwargs)
        return counted

    def collective_calls(self, *names: str) -> int:
        return sum(self.calls[n] for n in names)
