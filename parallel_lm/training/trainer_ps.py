"""Training through a parameter server (``--sync ps``): its step implementation, which the one loop
(train_loop.py) runs as it runs ``Trainer``'s.

Ranks 0..k-1 serve, the others work (parallel/parameter_server.py); each worker's gradients come from the
same code as every other layout (``Trainer.local_gradient``: no gradient sync, fp16 loss scaling of its own).
``train_step(step)`` is a server's step (synchronous) or window of one update per worker (asynchronous), or a
worker's push and pull; it returns the step's record, or None once this rank is done early (an update budget
spent). A synchronous run is ``aligned``: every rank ends a step at the same point, so the loop evaluates and
checkpoints between steps as for any layout; an asynchronous one does both after ``finish``. At the end every
rank holds the trained model (servers broadcast their shards), so checkpoint.pt has the same full state_dict as
data-parallel training, and the servers' optimizer shards are saved by parameter name as well, so a run
resumes exactly (synchronous) under any layout.
"""
from __future__ import annotations

import copy
import time
from collections import Counter

import torch
from mpi4py import MPI

from ..model import GPT
from ..parallel.optim import flat_state, param_states
from ..parallel.parameter_server import Server, Worker
from ..parallel.ps_shards import PSLayout, gather_shards, load_flat, share_final_params
from ..services import checkpoint
from ..services.metrics import StepRecord
from ..services.watchdog import NoWatchdog
from .trainer import Trainer, lr_at, validation_loss


class PSRun:
    """A parameter-server run on this rank: a server (``server``) or a worker (``trainer``, ``worker``)."""

    def __init__(self, cfg, comm, batches, state: dict | None = None, timeline=None, undoable: bool = False):
        """``undoable`` (--on-failure shrink): servers keep the step before, so that a survivor can undo it."""
        self.cfg, self.comm, self.batches, self.timeline = cfg, comm, batches, timeline
        self.rank = comm.Get_rank()
        self.layout = PSLayout(comm.Get_size(), cfg.servers)
        self.is_server = self.layout.is_server(self.rank)
        self.group = comm.Split(0 if self.is_server else 1, self.rank)  # servers' or workers' own communicator
        self.aligned = cfg.staleness == 0  # synchronous: all ranks between the same two steps
        self.start_step = int(state["step"]) if state is not None else 0
        # the step this run stops at: --steps, or sooner for a synchronous run with an update budget
        budgeted = cfg.staleness == 0 and cfg.ps_updates is not None
        self.end = min(cfg.steps, self.start_step + cfg.ps_updates) if budgeted else cfg.steps
        self.server = self.worker = self.trainer = None
        self.pushes = self.applied = self.dropped = self.max_staleness = self.max_lead = 0
        self.worker_rates, self.steps_done, self.t0 = None, 0, None
        self._watchdog = NoWatchdog()
        if self.is_server:
            torch.manual_seed(cfg.seed)  # the same initial weights as every worker
            self.model = GPT(cfg.model)
            optimizer_state = None
            if state is not None:
                self.model.load_state_dict(state["model"])
                saved = checkpoint.optimizer_by_name(state["optimizer"], self.model)
                named = dict(self.model.named_parameters())
                optimizer_state = flat_state({named[n]: st for n, st in saved.items() if n in named},
                                             list(named.values())) if saved else None
            self.server = Server(cfg, comm, self.group, self.layout, self.model, lambda s: lr_at(cfg, s),
                                 self.start_step, self.end, optimizer_state, timeline, undoable)
            self.recorder = _Recorder(cfg, self.start_step)
        else:
            self.trainer = Trainer(cfg, self.group, batches, state, timeline, sync_grads=False,
                                   slow_factor=cfg.straggler_factor(self.rank))
            self.model = self.trainer.model
            self.worker = Worker(cfg, comm, self.layout, self.trainer, timeline)
        self.n_params, self.flops_per_token = self.model.num_params(), self.model.flops_per_token()

    @property
    def watchdog(self):
        return self._watchdog

    @watchdog.setter
    def watchdog(self, dog) -> None:
        """The loop's watchdog, told what this rank waits for (by the server, or by the worker's trainer)."""
        self._watchdog = dog
        if self.server is not None:
            self.server.watchdog = dog
        else:
            self.trainer.watchdog = dog

    @property
    def completed(self) -> int:
        """Steps taken: a synchronous server's own; a worker defers to the servers (the most there can be)."""
        return self.server.completed if self.server is not None else self.cfg.steps

    def header(self) -> list[str]:
        """What the loop prints first: the layout, the mode, the model and the batch."""
        cfg, p = self.cfg, self.comm.Get_size()
        workers = p - cfg.servers
        mode = "synchronous" if cfg.staleness == 0 else (
            "fully asynchronous" if cfg.staleness is None else f"bounded staleness {cfg.staleness}")
        return [f"parallel_lm.train: {p} ranks = {cfg.servers} server(s) + {workers} worker(s), parameter server, "
                f"{mode}, optimizer {cfg.optimizer}, precision {cfg.precision}"
                + (f", straggler {cfg.straggler}" if cfg.straggler else "")
                + (f", update budget {cfg.ps_updates}" if cfg.ps_updates is not None else ""),
                f"model: {self.n_params / 1e6:.2f}M parameters, sharded over {cfg.servers} server(s); data: "
                f"{cfg.data}, global batch {cfg.global_batch_size} = {workers} worker(s) x "
                f"{cfg.global_batch_size // workers} sequences"
                + (f" (or {cfg.global_batch_size // workers + 1}, each worker's loss weighted by its rows)"
                   if cfg.global_batch_size % workers else "")]

    def train_step(self, step: int) -> StepRecord | None:
        """One step of this rank (see the module's docstring); None once it is done."""
        if step >= self.end:
            return None
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self.server is not None:
            losses = self.server.step(step, reply=step < self.end - 1)
            if losses is None:
                return None
            return self.recorder.record(losses, self.server.staleness, self.server.busy_s, self.server.version)
        t0 = time.perf_counter()
        loss, stopped = self.worker.step(step, last=step == self.end - 1)
        self.steps_done += 1
        if stopped:
            return None
        step_s = time.perf_counter() - t0
        tokens = self.trainer.rows * self.cfg.model.block_size  # this worker's share of the batch
        return StepRecord(step=step + 1, loss=loss, lr=lr_at(self.cfg, step), tokens=tokens, step_s=step_s,
                          compute_s=None, comm_s=None, exposed_comm_s=None, tokens_per_s=tokens / step_s)

    def finish(self) -> list[str]:
        """Collective, after the last step: every rank gets the trained model and the run's counts; returns the
        line that sums them up."""
        wall = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        rate = None
        if self.server is not None:
            self.server.finish()
            self.applied, self.dropped = self.server.received, self.server.dropped
            self.max_staleness = max(self.server.staleness, default=0)
            self.max_lead = self.server.max_lead
        else:
            self.pushes = self.worker.pushes
            rate = self.steps_done / wall if wall else None
        self.watchdog.at(self.end - 1, "end")
        share_final_params(self.comm, self.layout, self.model, self.server)
        stats = self.comm.allgather(dict(rate=rate, pushes=self.pushes, applied=self.applied, dropped=self.dropped,
                                         staleness=self.max_staleness, lead=self.max_lead))
        self.worker_rates = [s["rate"] for s in stats if s["rate"] is not None]  # steps/s of each worker, rank order
        self.pushes = sum(s["pushes"] for s in stats)  # gradient shards sent by all workers
        self.applied = sum(s["applied"] for s in stats)  # gradient shards applied by all servers
        self.dropped = sum(s["dropped"] for s in stats)  # shards that arrived after the update budget was spent
        self.max_staleness = max(s["staleness"] for s in stats)  # in optimizer updates
        self.max_lead = max(s["lead"] for s in stats)  # in worker steps
        return [f"gradient shards pushed {self.pushes}, applied {self.applied}"
                + (f", dropped after the budget {self.dropped}" if self.cfg.ps_updates is not None else "")
                + f"; max staleness {self.max_staleness} updates; max lead of a worker over the slowest "
                f"{self.max_lead} step(s); worker steps/s: {', '.join(f'{r:.1f}' for r in self.worker_rates)}; "
                f"{self.comm.allreduce(wall, op=MPI.MAX):.2f} s"]

    def evaluate(self) -> float:
        """The validation loss of the servers' current parameters, on every rank. Collective, between steps."""
        share_final_params(self.comm, self.layout, self.model, self.server)
        loss = validation_loss(self.model, self.batches, self.cfg, 0, self.cfg.global_batch_size) \
            if self.rank == 0 else None
        return self.comm.bcast(loss, root=0)

    def communicators(self) -> list:
        """What a failure revokes: the job's, the servers' or workers' own, and the watchdog's."""
        return [self.comm, self.group] + ([self.watchdog.comm] if hasattr(self.watchdog, "comm") else [])

    def abandon(self) -> None:
        """Stop the watchdog without a collective call (the communicators are revoked: ranks died)."""
        self.watchdog.close(wait=False)

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()

    def recover(self, survivors, error, last_record, make):
        """--on-failure shrink (services/shrink.py): a dead worker dropped, or a dead server's shard reloaded."""
        return survivors.recover_ps(self, error, make)

    def full_state(self, comm, step: int, root: int | None = None) -> dict | None:
        """The whole training state in checkpoint form, joined from the servers' shards (ranks 0..k-1 of
        ``comm``): on ``root``, or on every rank when None; None elsewhere. Collective over ``comm``."""
        joined = gather_shards(comm, self.server, self.cfg.servers, root)
        if joined is None:
            return None
        values, flat = joined
        model = copy.deepcopy(self.model)  # its structure and names; the values are the servers'
        load_flat(model, values)
        names = {p: n for n, p in model.named_parameters()}
        by_name = {names[p]: st for p, st in param_states(flat, list(names)).items()} if flat else {}
        return checkpoint.training_state(model.state_dict(), by_name, step, self.cfg.to_dict())

    def save(self, out, step: int, keep: int = 1) -> None:
        """checkpoint.pt from rank 0: the model and the servers' optimizer shards, by name. Collective."""
        state = self.full_state(self.comm, step, root=0)
        if state is not None:
            checkpoint.save(out, state["model"], state["optimizer"]["by_name"], step, self.cfg.to_dict(), keep=keep)


class _Recorder:
    """Turns a server's steps (synchronous) or windows of one update per worker (asynchronous) into records."""

    def __init__(self, cfg, start: int):
        self.cfg = cfg
        self.step, self.last_t, self.last_busy, self.last_hist = start, time.perf_counter(), 0.0, Counter()

    def record(self, losses, staleness: Counter, busy_s: float, version: int) -> StepRecord:
        """One metrics record from the step's losses and the server's running totals."""
        now, cfg = time.perf_counter(), self.cfg
        window = staleness - self.last_hist
        step_s = now - self.last_t
        busy = busy_s - self.last_busy
        tokens = cfg.global_batch_size * cfg.model.block_size
        self.step += 1
        self.last_t, self.last_busy, self.last_hist = now, busy_s, Counter(staleness)
        return StepRecord(step=self.step, loss=sum(losses) / len(losses), lr=lr_at(cfg, self.step - 1),
                          tokens=tokens, step_s=step_s, compute_s=None, comm_s=step_s - busy, exposed_comm_s=None,
                          tokens_per_s=tokens / step_s, server_busy_s=busy,
                          staleness={str(k): v for k, v in sorted(window.items())}, updates=version)
