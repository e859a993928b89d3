"""A hang watchdog (--timeout SECONDS): a rank that stops making progress ends the job, named.

An exception on any rank already ends the job at once (runtime.abort). What
no exception reports is a rank that just stops: stopped by a signal
(SIGSTOP), blocked forever on a file system, or a deadlock. The others then
wait inside a collective for ever.

Each rank's main thread marks its progress (``at(step, operation)``). A
thread on every rank sends a heartbeat to every other rank each ``period``
seconds over its own duplicate of the communicator: its step, its operation
and how long ago it last made progress. Each rank's thread then judges
what it has heard:

- a rank whose heartbeats stopped for ``timeout`` seconds is stuck (its
  process no longer runs: SIGSTOP, a dead node);
- when no rank has made progress for ``timeout`` seconds, the ranks furthest
  behind (the lowest step, then the earliest operation) are stuck: the
  others are waiting for them (stuck I/O, a deadlock).

The lowest rank that still sends heartbeats prints one message naming the
stuck rank(s), their operation and step, and aborts the job (exit 3); the
launcher kills every process, stopped ones included.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from mpi4py import MPI

TAG = 77
DEFAULT_TIMEOUT = 300.0  # s; a healthy step, evaluation or checkpoint of the presets here takes well under a minute
OPERATIONS = ("start", "forward/backward", "gradient sync", "optimizer step", "evaluation", "checkpoint write", "end")


class Watchdog:
    def __init__(self, comm, timeout: float, period: float | None = None):
        self.comm = comm.Dup()  # collective: every rank is here
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout
        self.period = period or min(1.0, timeout / 10)
        self.step, self.op, self.progress_at = 0, "start", time.monotonic()
        now = time.monotonic()
        self.heard = {r: (now, 0, "start", 0.0) for r in range(self.size)}  # rank -> (received, step, op, idle)
        self.running = True
        self.sends = []
        self.thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self.thread.start()

    def at(self, step: int, op: str) -> None:
        """The main thread reached ``op`` of ``step`` (an entry of OPERATIONS)."""
        self.step, self.op, self.progress_at = step, op, time.monotonic()

    def close(self) -> None:
        self.running = False
        self.thread.join()

    # -- the watching thread -----------------------------------------------------------------
    def _watch(self) -> None:
        while self.running:
            now = time.monotonic()
            beat = (self.step, self.op, now - self.progress_at)
            self.sends = [r for r in self.sends if not r.Test()]
            self.sends += [self.comm.isend(beat, dest=r, tag=TAG) for r in range(self.size) if r != self.rank]
            self.heard[self.rank] = (now,) + beat
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG):
                status = MPI.Status()
                beat = self.comm.recv(source=MPI.ANY_SOURCE, tag=TAG, status=status)
                self.heard[status.Get_source()] = (time.monotonic(),) + tuple(beat)
            verdict = self._judge(time.monotonic())
            if verdict:
                live = [r for r, (seen, *_) in self.heard.items() if now - seen < self.timeout]
                if self.rank == min(live, default=self.rank):
                    sys.stderr.write(f"[rank {self.rank}] watchdog: {verdict}; ending the job (--timeout "
                                     f"{self.timeout:g} s; 0 turns the watchdog off)\n")
                    sys.stderr.flush()
                    MPI.COMM_WORLD.Abort(3)
                    os._exit(3)
            time.sleep(self.period)
        for r in range(self.size):  # the last word: this rank is done, and will never be silent by accident
            if r != self.rank:
                self.comm.isend((self.step, "end", 0.0), dest=r, tag=TAG)

    def _judge(self, now: float) -> str | None:
        """What is stuck, in words, or None while the job makes progress."""
        watched = {r: h for r, h in self.heard.items() if h[2] != "end"}
        silent = [r for r, (seen, *_) in watched.items() if now - seen > self.timeout]
        if silent:
            return f"no heartbeat for {self.timeout:g} s from {_ranks(silent)} (last heard: {self._where(silent)}): " \
                   "the process stopped (a signal, a dead node)"
        idle = {r: idle + (now - seen) for r, (seen, _, _, idle) in watched.items()}
        if not idle or min(idle.values()) < self.timeout:
            return None
        position = {r: (step, OPERATIONS.index(op) if op in OPERATIONS else 0)
                    for r, (_, step, op, _) in watched.items()}
        behind = min(position.values())
        stuck = [r for r, pos in position.items() if pos == behind]
        waiting = [r for r in position if r not in stuck]
        return (f"no progress for {self.timeout:g} s: {_ranks(stuck)} stuck in {self._where(stuck)}"
                + (f", {_ranks(waiting)} waiting for {'it' if len(stuck) == 1 else 'them'}" if waiting
                   else ": every rank at the same point (a deadlock?)"))

    def _where(self, ranks: list[int]) -> str:
        """The operation and step of ``ranks`` as last heard, grouped."""
        places = {}
        for r in ranks:
            _, step, op, _ = self.heard[r]
            places.setdefault(f"{op} at step {step + 1}", []).append(r)
        if len(places) == 1:
            return next(iter(places))
        return "; ".join(f"{_ranks(rs)}: {where}" for where, rs in places.items())


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


class NoWatchdog:
    """--timeout 0: progress marks cost nothing and nothing watches."""

    def at(self, step: int, op: str) -> None:
        pass

    def close(self) -> None:
        pass


def watchdog(comm, timeout: float):
    return Watchdog(comm, timeout) if timeout and timeout > 0 else NoWatchdog()
