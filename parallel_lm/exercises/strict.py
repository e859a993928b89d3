"""The communicator a learner's code is checked on: stricter than MPI has to be, so that latent bugs show every time.

``StrictComm`` wraps a communicator and changes three things, each a bug
that real MPI lets pass on small messages and punishes on large ones:

- every Send is synchronous (MPI_Ssend: it returns only once the receiver
  has started receiving). MPI may buffer a small message and return at
  once, so code where every rank sends before any receives works on small
  arrays and hangs on large ones; here it fails on the first case, named
  as the deadlock it is (``LatentDeadlock``);
- every request a non-blocking call returns (Isend, Irecv, Ibcast, ...) is
  kept; ``ledger.unfinished()`` names those never completed with Wait or
  Test, whose buffers MPI may still be reading or writing;
- with ``node_of`` (world rank -> node), every call that moves data
  between nodes is recorded in ``ledger.crossings``: a send to a rank on
  another node, and a collective on a communicator whose members sit on
  more than one node. Communicators made from this one (Split, Dup,
  Create_group, ...) are wrapped too, so a learner's own sub-communicators
  are watched the same way.
"""
from __future__ import annotations

import time

from mpi4py import MPI

DEADLOCK_S = 10.0  # how long a synchronous Send waits for its receiver before the checker calls it a deadlock
DATA_COLLECTIVES = {"Allreduce", "Iallreduce", "Reduce", "Ireduce", "Bcast", "Ibcast", "Allgather", "Iallgather",
                    "Allgatherv", "Reduce_scatter", "Reduce_scatter_block", "Alltoall", "Ialltoall", "Alltoallv",
                    "Gather", "Gatherv", "Scatter", "Scatterv", "Scan", "Exscan", "allreduce", "reduce", "bcast",
                    "allgather", "alltoall", "gather", "scatter", "scan", "exscan"}


class LatentDeadlock(RuntimeError):
    """A Send that no Recv matched within DEADLOCK_S: the code relies on MPI buffering the message."""


class Ledger:
    """What a learner's calls left behind, shared by a communicator and every one made from it."""

    def __init__(self, node_of=None, requests: list | None = None):
        self.node_of = node_of
        self.requests = [] if requests is None else requests
        self.crossings: list[str] = []

    def unfinished(self) -> list:
        return [req for req in self.requests if req != MPI.REQUEST_NULL]

    def forget(self) -> None:
        """Drop the requests seen so far (after their case has been judged)."""
        self.requests.clear()


def _world_ranks(comm) -> tuple[int, ...]:
    group, world = comm.Get_group(), MPI.COMM_WORLD.Get_group()
    try:
        return tuple(MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world))
    finally:
        group.Free()
        world.Free()


def _wait_for_receiver(req, what: str, rank: int, dest: int) -> None:
    deadline, spins = time.monotonic() + DEADLOCK_S, 0
    while not req.Test():
        spins += 1
        if spins > 2000:
            time.sleep(0.001)
        if time.monotonic() > deadline:
            raise LatentDeadlock(
                f"rank {rank}'s {what} to rank {dest} was not received within {DEADLOCK_S:g} s. The checker sends "
                "synchronously, as MPI does once a message is too big to buffer: if every rank sends before it "
                "receives, each waits for the others forever. Use Sendrecv, or let half the ranks receive first.")


class StrictComm:
    """A communicator with synchronous sends, kept requests and, given ``node_of``, recorded node crossings."""

    def __init__(self, comm, ledger: Ledger | None = None):
        self._comm = comm
        self.ledger = Ledger() if ledger is None else ledger
        self._members = _world_ranks(comm)
        nodes = {self.ledger.node_of(w) for w in self._members} if self.ledger.node_of else set()
        self._spans_nodes = len(nodes) > 1

    def fresh(self, node_of=None) -> StrictComm:
        """The same communicator with a new record of crossings (``node_of``), sharing the kept requests."""
        return StrictComm(self._comm, Ledger(node_of, self.ledger.requests))

    def _crosses(self, dest: int) -> bool:
        node_of = self.ledger.node_of
        return bool(node_of) and 0 <= dest < len(self._members) and \
            node_of(self._members[dest]) != node_of(self._members[self._comm.Get_rank()])

    def _sent(self, call: str, dest: int) -> None:
        if self._crosses(dest):
            self.ledger.crossings.append(f"{call} to rank {dest} (world rank {self._members[dest]}, on another node)")

    def _kept(self, req):
        self.ledger.requests.append(req)
        return req

    def Send(self, buf, dest, tag=0):
        self._sent("Send", dest)
        _wait_for_receiver(self._comm.Issend(buf, dest, tag), "Send", self._comm.Get_rank(), dest)

    Ssend = Send

    def send(self, obj, dest, tag=0):
        self._sent("send", dest)
        _wait_for_receiver(self._comm.issend(obj, dest, tag), "send", self._comm.Get_rank(), dest)

    def Isend(self, buf, dest, tag=0):
        self._sent("Isend", dest)
        return self._kept(self._comm.Issend(buf, dest, tag))

    Issend = Isend

    def isend(self, obj, dest, tag=0):
        self._sent("isend", dest)
        return self._kept(self._comm.issend(obj, dest, tag))

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=MPI.ANY_SOURCE, recvtag=MPI.ANY_TAG,
                 status=None):
        self._sent("Sendrecv", dest)
        return self._comm.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if not callable(attr):
            return attr

        def watched(*args, **kwargs):
            if name in DATA_COLLECTIVES and self._spans_nodes:
                self.ledger.crossings.append(f"{name} on a communicator that spans nodes "
                                             f"(world ranks {list(self._members)})")
            result = attr(*args, **kwargs)
            if isinstance(result, MPI.Request):
                return self._kept(result)
            if isinstance(result, MPI.Intracomm) and result != MPI.COMM_NULL:
                return StrictComm(result, self.ledger)
            return result
        return watched
