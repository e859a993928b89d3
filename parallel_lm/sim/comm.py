"""Simulated communicators: what an algorithm sees instead of an MPI communicator.

They offer the part of mpi4py's ``Comm`` the collectives use
(``Get_rank``, ``Get_size``, ``Send``, ``Recv``, ``Sendrecv``, and
``Isend``/``Irecv`` with their requests' ``Wait``) and write every call
into a ``Recorder``: one op per call, with the bytes reduced since the
previous call. Started requests become one ``Concurrent`` op at the first
``Wait``: every message started since runs at once, and the op ends when
all have (an algorithm waits for everything it started together, as the
pipelined all-reduce does). ``replay.py`` later turns those ops into time.

- ``GroupComm`` (timing-only): nothing moves; the rank may be a
  ``RankVector`` standing for a whole group of ranks.
- ``DataComm`` (data mode): one thread per virtual rank; messages are
  copied through mailboxes, so results are real. Sends are buffered
  (the sender does not wait), so the data run itself cannot deadlock;
  the replay applies rendezvous timing and reports a deadlock if the
  algorithm would hang on a real network.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

NONE = -1  # "no peer" in an op: a plain Send has no receive half, and so on


@dataclass
class Concurrent:
    """Messages started together and waited for together: ``sends`` (dest, bytes, tag) and ``recvs``
    (source, bytes, tag), after ``gamma`` bytes reduced locally. Values are ints or one int per rank."""
    gamma: object
    sends: list
    recvs: list


class Recorder:
    """The ops of one call of an algorithm (one rank, or a group of ranks run together).

    A blocking op is ``(gamma_bytes, dest, send_bytes, send_tag, source, recv_bytes, recv_tag)``:
    the bytes reduced locally before it, then its send and receive halves
    (``NONE`` for a missing half); started requests are a ``Concurrent``. Values are ints or one int per rank.
    """

    def __init__(self):
        self.ops: list = []
        self.pending_gamma = 0
        self.started = Concurrent(0, [], [])  # Isend/Irecv halves not yet waited for

    def reduce(self, nbytes) -> None:
        self.pending_gamma = self.pending_gamma + nbytes

    def record(self, dest, send_bytes, send_tag, source, recv_bytes, recv_tag) -> None:
        if self.started.sends or self.started.recvs:
            raise ValueError("the simulator runs a blocking message after Isend/Irecv only once they are waited for")
        self.ops.append((self.pending_gamma, dest, send_bytes, send_tag, source, recv_bytes, recv_tag))
        self.pending_gamma = 0

    def start(self, send: tuple | None = None, recv: tuple | None = None) -> None:
        (self.started.sends if send else self.started.recvs).append(send or recv)

    def wait_all(self) -> bool:
        """Record the started halves as one op; False if none were pending."""
        if not (self.started.sends or self.started.recvs):
            return False
        self.started.gamma, self.pending_gamma = self.pending_gamma, 0
        self.ops.append(self.started)
        self.started = Concurrent(0, [], [])
        return True

    @property
    def tail_gamma(self):
        """Bytes reduced after the last message."""
        return self.pending_gamma


def _check_peer(peer, size: int, what: str) -> None:
    if np.any((np.asarray(peer) < 0) | (np.asarray(peer) >= size)):
        raise ValueError(f"simulated {what} with rank {peer} outside 0..{size - 1}")


class GroupComm:
    """Timing-only communicator for one rank or a group of ranks (``RankVector``)."""

    def __init__(self, rank, size: int, recorder: Recorder):
        self._rank, self._size, self._rec = rank, size, recorder

    def Get_rank(self):
        return self._rank

    def Get_size(self) -> int:
        return self._size

    def Send(self, buf, dest, tag=0):
        _check_peer(dest, self._size, "Send")
        self._rec.record(dest, buf.nbytes, tag, NONE, 0, 0)

    def Recv(self, buf, source, tag=0, status=None):
        _check_peer(source, self._size, "Recv")
        self._rec.record(NONE, 0, 0, source, buf.nbytes, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        _check_peer(dest, self._size, "Sendrecv")
        _check_peer(source, self._size, "Sendrecv")
        self._rec.record(dest, sendbuf.nbytes, sendtag, source, recvbuf.nbytes, recvtag)

    def Isend(self, buf, dest, tag=0):
        _check_peer(dest, self._size, "Isend")
        self._rec.start(send=(dest, buf.nbytes, tag))
        return Request(self)

    def Irecv(self, buf, source, tag=0):
        _check_peer(source, self._size, "Irecv")
        self._rec.start(recv=(source, buf.nbytes, tag))
        return Request(self)

    def _wait_all(self) -> None:
        self._rec.wait_all()


class Request:
    """A started Isend or Irecv. Its ``Wait`` completes every request started on the communicator since the
    last wait (one ``Concurrent`` op); later ``Wait`` calls on the others return at once."""

    def __init__(self, comm):
        self._comm = comm

    def Wait(self, status=None):
        self._comm._wait_all()


class SimAbort(RuntimeError):
    """Another simulated rank failed, or every live rank waits on a message nobody sends."""


class Exchange:
    """Mailboxes shared by the threads of a data-mode run.

    ``blocked`` maps each waiting rank to the mailbox it waits on; when
    every unfinished rank waits on an empty mailbox nobody can fill, the
    run stops with a deadlock error instead of hanging.
    """

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.arrived = [threading.Condition(self.lock) for _ in range(size)]
        self.boxes: dict[tuple[int, int, int], deque] = {}
        self.blocked: dict[int, tuple[int, int, int]] = {}
        self.finished = 0
        self.failure: str | None = None

    def put(self, src: int, dst: int, tag: int, data: np.ndarray) -> None:
        key = (src, dst, tag)
        with self.lock:
            self.boxes.setdefault(key, deque()).append(data.copy())
            if self.blocked.get(dst) == key:
                del self.blocked[dst]
                self.arrived[dst].notify()

    def take(self, src: int, dst: int, tag: int) -> np.ndarray:
        key = (src, dst, tag)
        with self.lock:
            box = self.boxes.setdefault(key, deque())
            while not box:
                self.blocked[dst] = key
                self._check_deadlock()
                if self.failure is not None:
                    raise SimAbort(self.failure)
                self.arrived[dst].wait()
            return box.popleft()

    def _check_deadlock(self) -> None:
        if self.blocked and len(self.blocked) + self.finished == self.size:
            waits = ", ".join(f"rank {d} waits for rank {s} (tag {t})" for d, (s, _, t) in sorted(self.blocked.items())[:4])
            self.fail(f"deadlock: every unfinished rank waits for a message nobody will send: {waits}")

    def fail(self, why: str) -> None:
        """Record the first failure and wake every waiting rank (lock held)."""
        if self.failure is None:
            self.failure = why
        for cond in self.arrived:
            cond.notify_all()

    def done(self) -> None:
        with self.lock:
            self.finished += 1
            self._check_deadlock()

    def abort(self, why: str) -> None:
        with self.lock:
            self.fail(why)


class DataComm(GroupComm):
    """Data-mode communicator of one virtual rank (one thread)."""

    def __init__(self, rank: int, size: int, recorder: Recorder, exchange: Exchange):
        super().__init__(rank, size, recorder)
        self._ex = exchange
        self._incoming = []  # Irecv's (buffer, source, tag), filled at the wait

    def _receive(self, buf, source, tag):
        data = self._ex.take(source, self._rank, tag)
        if data.size > buf.size:
            raise ValueError(f"rank {self._rank}: message of {data.nbytes} B from rank {source} "
                             f"does not fit the {buf.nbytes} B receive buffer (MPI would truncate)")
        buf.data[: data.size] = data

    def Send(self, buf, dest, tag=0):
        super().Send(buf, dest, tag)
        self._ex.put(self._rank, dest, tag, buf.data)

    def Recv(self, buf, source, tag=0, status=None):
        super().Recv(buf, source, tag)
        self._receive(buf, source, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        super().Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag)
        self._ex.put(self._rank, dest, sendtag, sendbuf.data)
        self._receive(recvbuf, source, recvtag)

    def Isend(self, buf, dest, tag=0):
        self._ex.put(self._rank, dest, tag, buf.data)  # buffered: the data leaves now
        return super().Isend(buf, dest, tag)

    def Irecv(self, buf, source, tag=0):
        self._incoming.append((buf, source, tag))
        return super().Irecv(buf, source, tag)

    def _wait_all(self) -> None:
        super()._wait_all()
        incoming, self._incoming = self._incoming, []
        for buf, source, tag in incoming:  # in the order they were posted, as MPI matches them
            self._receive(buf, source, tag)
