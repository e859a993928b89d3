"""Fault injection, for the tests and benchmarks/faults.py: make a rank fail on purpose, once.

    PARALLEL_LM_FAIL_AT=RANK:STEP[:HOW][,RANK:STEP[:HOW]...]

fails that (world) rank when it starts that step (0-based), HOW being
- ``raise``: an exception (the default); ``kill``: SIGKILL; ``stop``: SIGSTOP;
- ``hang``: the main thread sleeps for ever (stuck I/O, a deadlock);
- ``killwrite``: SIGKILL in the middle of the next checkpoint write (after its
  bytes are written, before the rename);
- ``killcomm``: SIGKILL inside the next explicit collective on a
  communicator passed through ``in_collectives`` (the trainer's
  data-parallel one), after its first message (the others are mid-algorithm);
- ``corrupt``: truncate the file PARALLEL_LM_CORRUPT names (the newest
  checkpoint), then SIGKILL.

With PARALLEL_LM_FAIL_ONCE=PREFIX each fault fires only once: it creates
PREFIX.RANK.STEP first and does not fire when that file exists, so a
restarted job runs through.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mpi4py import MPI

_kill_in_write = False
_kill_in_collective = False
_sent_since_armed = 0


def _once(rank: int, step: int) -> bool:
    prefix = os.environ.get("PARALLEL_LM_FAIL_ONCE")
    if not prefix:
        return True
    try:
        os.close(os.open(f"{prefix}.{rank}.{step}", os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def maybe_fail(step: int) -> None:
    """Fail here if PARALLEL_LM_FAIL_AT names this rank and ``step``."""
    global _kill_in_write, _kill_in_collective
    rank = MPI.COMM_WORLD.Get_rank()
    for spec in filter(None, os.environ.get("PARALLEL_LM_FAIL_AT", "").split(",")):
        who, at, how = (spec.split(":") + ["raise"])[:3]
        if (who, at) != (str(rank), str(step)) or not _once(rank, step):
            continue
        if how in ("killwrite", "killcomm"):
            _kill_in_write, _kill_in_collective = how == "killwrite", how == "killcomm"
            return
        if how == "corrupt":
            target = Path(os.environ["PARALLEL_LM_CORRUPT"])
            target.write_bytes(target.read_bytes()[:1000])
            how = "kill"
        if how in ("kill", "stop"):
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        while how == "hang":
            time.sleep(3600)
        raise RuntimeError(f"PARALLEL_LM_FAIL_AT={spec}: failing on purpose")


def maybe_kill_in_write() -> None:
    """Inside a checkpoint write, between its bytes and its rename: SIGKILL if ``killwrite`` armed it."""
    if _kill_in_write:
        os.kill(os.getpid(), signal.SIGKILL)


def in_collectives(comm):
    """``comm``, or, when PARALLEL_LM_FAIL_AT names a ``killcomm``, ``comm`` wrapped so that once that fault is
    armed this rank is SIGKILLed at its next message after the first (the others mid-algorithm). The caller
    wraps the communicator explicitly; comm/ knows nothing of faults."""
    if "killcomm" not in os.environ.get("PARALLEL_LM_FAIL_AT", ""):
        return comm
    from .comm.trace import ObservedComm

    class DiesInCollective(ObservedComm):
        def observe(self, call, sendbuf=None, dest=None, recvbuf=None, source=None):
            global _sent_since_armed
            if not _kill_in_collective:
                return
            if _sent_since_armed:
                os.kill(os.getpid(), signal.SIGKILL)
            _sent_since_armed += 1

        def Dup(self):  # the communication thread's copy dies the same way
            return DiesInCollective(self._comm.Dup())

    return DiesInCollective(comm)
