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

The variables are read by ``environment.py`` into a ``FaultPlan`` that the
entry point ``arm``s; nothing fails until then.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

HOWS = ("raise", "kill", "stop", "hang", "killwrite", "killcomm", "corrupt")


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    how: str = "raise"

    def __str__(self) -> str:
        return f"{self.rank}:{self.step}:{self.how}"


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()
    once: str | None = None  # PREFIX: each fault fires once, marked by the file PREFIX.RANK.STEP
    corrupt: Path | None = None  # the file ``corrupt`` truncates

    @classmethod
    def parse(cls, fail_at: str, once: str | None = None, corrupt: str | None = None) -> "FaultPlan":
        """The plan PARALLEL_LM_FAIL_AT, _FAIL_ONCE and _CORRUPT describe; ValueError naming a bad part."""
        faults = []
        for spec in filter(None, (s.strip() for s in fail_at.split(","))):
            parts = spec.split(":")
            how = parts[2] if len(parts) == 3 else "raise"
            if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]) or how not in HOWS:
                raise ValueError(f"PARALLEL_LM_FAIL_AT={fail_at!r}: each fault is RANK:STEP[:HOW] with HOW one of "
                                 f"{', '.join(HOWS)} ({spec!r} is not)")
            if how == "corrupt" and not corrupt:
                raise ValueError(f"PARALLEL_LM_FAIL_AT={spec}: set PARALLEL_LM_CORRUPT to the file to truncate")
            faults.append(Fault(int(parts[0]), int(parts[1]), how))
        return cls(tuple(faults), once or None, Path(corrupt) if corrupt else None)


_plan = FaultPlan()
_kill_in_write = False
_kill_in_collective = False
_sent_since_armed = 0


def arm(plan: FaultPlan) -> None:
    """Make ``plan`` the faults this process injects (``environment.apply`` does, at the entry point)."""
    global _plan
    _plan = plan


def step_check():
    """``maybe_fail`` if the armed plan holds a fault, else None: a step with nothing planned checks nothing."""
    return maybe_fail if _plan.faults else None


def _once(rank: int, step: int) -> bool:
    if not _plan.once:
        return True
    try:
        os.close(os.open(f"{_plan.once}.{rank}.{step}", os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def maybe_fail(step: int) -> None:
    """Fail here if the armed plan names this rank and ``step``."""
    global _kill_in_write, _kill_in_collective
    if not _plan.faults:
        return
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    for fault in _plan.faults:
        if (fault.rank, fault.step) != (rank, step) or not _once(rank, step):
            continue
        how = fault.how
        if how in ("killwrite", "killcomm"):
            _kill_in_write, _kill_in_collective = how == "killwrite", how == "killcomm"
            return
        if how == "corrupt":
            _plan.corrupt.write_bytes(_plan.corrupt.read_bytes()[:1000])
            how = "kill"
        if how in ("kill", "stop"):
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        while how == "hang":
            time.sleep(3600)
        raise RuntimeError(f"PARALLEL_LM_FAIL_AT={fault}: failing on purpose")


def maybe_kill_in_write() -> None:
    """Inside a checkpoint write, between its bytes and its rename: SIGKILL if ``killwrite`` armed it."""
    if _kill_in_write:
        os.kill(os.getpid(), signal.SIGKILL)


def in_collectives(comm):
    """``comm``, or, when the armed plan holds a ``killcomm``, ``comm`` wrapped so that once that fault is
    armed this rank is SIGKILLed at its next message after the first (the others mid-algorithm). The caller
    wraps the communicator explicitly; comm/ knows nothing of faults."""
    if not any(fault.how == "killcomm" for fault in _plan.faults):
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
