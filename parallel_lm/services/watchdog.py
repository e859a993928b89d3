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

Under ``--on-failure shrink`` (``kill=True``) a stuck rank is treated as a
dead one instead: that rank sends it SIGKILL (it runs on the same node; on
another node, or when every rank is stuck, it aborts as above), and the
survivors go on without it (shrink.py).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from mpi4py import MPI

from ..runtime import abort

TAG = 77
DEFAULT_TIMEOUT = 300.0  # s; a healthy step, evaluation or checkpoint of the presets here takes well under a minute
OPERATIONS = ("start", "forward/backward", "gradient sync", "optimizer step", "evaluation", "checkpoint write", "end")


class Watchdog:
    def __init__(self, comm, timeout: float, period: float | None = None, kill: bool = False):
        self.comm = comm.Dup()  # collective: every rank is here
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.kill = kill
        self.processes = self.comm.allgather((socket.gethostname(), os.getpid())) if kill else None
        self.timeout = timeout
        self.period = period or min(1.0, timeout / 10)
        self.step, self.op, self.progress_at = 0, "start", time.monotonic()
        now = time.monotonic()
        self.heard = {r: (now, 0, "start", 0.0) for r in range(self.size)}  # rank -> (received, step, op, idle)
        self.stopped = threading.Event()  # set by close(): wakes the thread from its wait at once
        self.sends = []
        self.thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self.thread.start()

    def at(self, step: int, op: str) -> None:
        """The main thread reached ``op`` of ``step`` (an entry of OPERATIONS)."""
        self.step, self.op, self.progress_at = step, op, time.monotonic()

    def close(self, wait: bool = True) -> None:
        """Stop watching; ``wait=False``: without waiting for the thread (ranks died, its communicator revoked)."""
        self.stopped.set()
        if wait:
            self.thread.join()

    # -- the watching thread -----------------------------------------------------------------
    def _watch(self) -> None:
        try:
            self._beat()
        except MPI.Exception:  # a rank died (--on-failure shrink): the main thread recovers, and watches anew
            self.stopped.set()

    def _beat(self) -> None:
        while not self.stopped.is_set():
            now = time.monotonic()
            if now - self.heard[self.rank][0] > self.timeout:
                # This rank itself was stopped (SIGSTOP, then the launcher's SIGCONT before it kills the job) or
                # not scheduled: every other rank looks silent to it. Seen under load: the stopped rank woke and
                # named the others. Give them a fresh --timeout instead of judging them.
                self.heard = {r: (now, *h[1:]) for r, h in self.heard.items()}
            beat = (self.step, self.op, now - self.progress_at)
            self.sends = [r for r in self.sends if not r.Test()]
            self.sends += [self.comm.isend(beat, dest=r, tag=TAG) for r in range(self.size) if r != self.rank]
            self.heard[self.rank] = (now,) + beat
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG):
                status = MPI.Status()
                beat = self.comm.recv(source=MPI.ANY_SOURCE, tag=TAG, status=status)
                self.heard[status.Get_source()] = (time.monotonic(),) + tuple(beat)
            verdict, stuck = self._judge(time.monotonic())
            if verdict:
                live = [r for r, (seen, *_) in self.heard.items() if now - seen < self.timeout]
                if self.rank == min(live, default=self.rank):
                    if self._kill(verdict, stuck):
                        return
                    sys.stderr.write(f"[rank {self.rank}] watchdog: {verdict}; ending the job (--timeout "
                                     f"{self.timeout:g} s; 0 turns the watchdog off)\n")
                    abort(3, MPI.COMM_WORLD)  # after a pause that lets the launcher forward the message
                    os._exit(3)
            self.stopped.wait(self.period)
        for r in range(self.size):  # the last word: this rank is done, and will never be silent by accident
            if r != self.rank:
                self.sends.append(self.comm.isend((self.step, "end", 0.0), dest=r, tag=TAG))
        self._last_words()

    def _last_words(self, timeout: float = 10.0) -> None:
        """Take every other rank's heartbeats up to its last word, and see this rank's own delivered, so that no
        message is left unmatched when MPI ends (across nodes, UCX warns of each one). A rank that does not say
        its last word within ``timeout`` seconds (it failed, or ends much later) is left to MPI."""
        waiting, deadline = set(range(self.size)) - {self.rank}, time.monotonic() + timeout
        while (waiting or self.sends) and time.monotonic() < deadline:
            self.sends = [r for r in self.sends if not r.Test()]
            status = MPI.Status()
            if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG, status=status):
                if self.comm.recv(source=status.Get_source(), tag=TAG)[1] == "end":
                    waiting.discard(status.Get_source())
            else:
                time.sleep(0.002)

    def _kill(self, verdict: str, stuck: list[int]) -> bool:
        """--on-failure shrink: SIGKILL the stuck ranks, so the survivors go on without them; False where this
        rank cannot (not shrinking, a rank on another node, or every rank stuck)."""
        host = socket.gethostname()
        if not self.kill or len(stuck) == self.size or any(self.processes[r][0] != host for r in stuck):
            return False
        sys.stderr.write(f"[rank {self.rank}] watchdog: {verdict}; killing {_ranks(stuck)} so that the others go "
                         f"on without (--on-failure shrink)\n")
        sys.stderr.flush()
        for r in stuck:
            os.kill(self.processes[r][1], signal.SIGKILL)
        self.stopped.set()
        return True

    def _judge(self, now: float) -> tuple[str | None, list[int]]:
        """What is stuck, in words, and which ranks; (None, []) while the job makes progress."""
        watched = {r: h for r, h in self.heard.items() if h[2] != "end"}
        silent = [r for r, (seen, *_) in watched.items() if now - seen > self.timeout]
        if silent:
            return (f"no heartbeat for {self.timeout:g} s from {_ranks(silent)} (last heard: {self._where(silent)}): "
                    "the process stopped (a signal, a dead node)"), silent
        idle = {r: idle + (now - seen) for r, (seen, _, _, idle) in watched.items()}
        if not idle or min(idle.values()) < self.timeout:
            return None, []
        position = {r: (step, OPERATIONS.index(op) if op in OPERATIONS else 0)
                    for r, (_, step, op, _) in watched.items()}
        behind = min(position.values())
        stuck = [r for r, pos in position.items() if pos == behind]
        waiting = [r for r in position if r not in stuck]
        return (f"no progress for {self.timeout:g} s: {_ranks(stuck)} stuck in {self._where(stuck)}"
                + (f", {_ranks(waiting)} waiting for {'it' if len(stuck) == 1 else 'them'}" if waiting
                   else ": every rank at the same point (a deadlock?)")), stuck

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

    def close(self, wait: bool = True) -> None:
        pass


def watchdog(comm, timeout: float, kill: bool = False):
    """The watchdog for --timeout (0: none); ``kill``: a stuck rank is killed, not the job (--on-failure shrink)."""
    return Watchdog(comm, timeout, kill=kill) if timeout and timeout > 0 else NoWatchdog()
