"""Network emulation: make every message cost what it would on a slower interconnect.

``NetemComm(comm, alpha_s, beta_s_per_byte)`` wraps a communicator (the
``--netem`` flag of train and bench wraps the one their collectives run
on): a Send, Recv or Sendrecv of b bytes returns no sooner than
alpha + b.beta after it was called. The real transfer happens inside that time, so as
long as the emulated network is slower than this machine's shared
memory, each message takes the emulated time, and a 2-core laptop
behaves like ranks on separate nodes of that network. Local reductions
run at this machine's real speed, so predictions under emulation use
the emulated alpha and beta with this machine's gamma.

Two levels: given ``inside`` (a network) and ``ranks_per_node`` L, a
message between ranks of the same emulated node (rank // L equal) takes
``inside``'s time and one between nodes the main network's, so a
hierarchical all-reduce meets slow links only where a cluster has them.

Not emulated: the MPI library's own collectives (``mpi``: no messages
pass through Python, the wrapper hands them to the library untouched).
"""
from __future__ import annotations

import ctypes
import functools
import time

from .trace import ObservedComm

SPIN_S = 30e-6  # sleep until this close to the deadline, then spin: sleep alone overshoots


@functools.cache
def parse(spec: str) -> tuple[float, float]:
    """(alpha_s, beta_s_per_byte) from "alpha=..,beta=.."."""
    values = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            values[key.strip()] = None
    if set(values) != {"alpha", "beta"} or None in values.values() or min(values.values()) < 0:
        raise ValueError(f"{spec!r}: write alpha=SECONDS,beta=SECONDS_PER_BYTE, e.g. alpha=2e-05,beta=8e-10")
    return values["alpha"], values["beta"]


@functools.cache
def _fine_timer_slack() -> None:
    """Ask Linux for 1 ns timer slack (default 50 us) so short sleeps end on time."""
    try:
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def wait_until(deadline: float) -> None:
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if left > SPIN_S:
            time.sleep(left - SPIN_S)


class NetemComm(ObservedComm):
    """Each point-to-point call lasts at least alpha + bytes.beta (the slower direction of a Sendrecv)."""

    def __init__(self, comm, alpha_s: float, beta_s_per_byte: float, inside=None, ranks_per_node: int = 0):
        super().__init__(comm)
        self.alpha_s, self.beta_s_per_byte = alpha_s, beta_s_per_byte
        two_levels = inside is not None and ranks_per_node > 0
        self.inside, self.ranks_per_node = (inside, ranks_per_node) if two_levels else (None, 0)
        self._node = comm.Get_rank() // ranks_per_node if self.inside else 0
        _fine_timer_slack()

    def Dup(self):
        """A duplicate (e.g. for a communication thread), emulating the same network."""
        return NetemComm(self._comm.Dup(), self.alpha_s, self.beta_s_per_byte, self.inside, self.ranks_per_node)

    def _seconds(self, peer, nbytes: int) -> float:
        if self.inside is not None and peer // self.ranks_per_node == self._node:
            return self.inside.alpha_s + nbytes * self.inside.beta_s_per_byte
        return self.alpha_s + nbytes * self.beta_s_per_byte

    def _timed(self, seconds: float, call, *args, **kwargs):
        deadline = time.perf_counter() + seconds
        result = call(*args, **kwargs)
        wait_until(deadline)
        return result

    def Send(self, buf, dest, tag=0):
        return self._timed(self._seconds(dest, buf.nbytes), self._comm.Send, buf, dest=dest, tag=tag)

    def Recv(self, buf, source, tag=0, status=None):
        return self._timed(self._seconds(source, buf.nbytes), self._comm.Recv, buf, source=source, tag=tag,
                           status=status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        seconds = max(self._seconds(dest, sendbuf.nbytes), self._seconds(source, recvbuf.nbytes))
        return self._timed(seconds, self._comm.Sendrecv, sendbuf, dest=dest,
                           sendtag=sendtag, recvbuf=recvbuf, source=source, recvtag=recvtag, status=status)

