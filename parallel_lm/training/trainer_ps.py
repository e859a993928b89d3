"""Training through a parameter server (``--sync ps``): wires parallel/parameter_server.py to the trainer.

Ranks 0..k-1 serve, the others work; each worker's gradients come from the
same loop as every other layout (``Trainer.local_gradient``: no gradient
sync, fp16 loss scaling of its own). Server 0 writes the per-step metrics;
at the end every rank holds the trained model (servers broadcast their
shards), so checkpoint.pt has the same full state_dict as data-parallel
training, and the servers' optimizer shards are saved by parameter name
as well, so a run resumes exactly (synchronous) under any layout.
"""
from __future__ import annotations

import copy
import time
from collections import Counter

import torch
from mpi4py import MPI

from ..services import checkpoint, shrink
from ..services.metrics import MetricsWriter, StepRecord, validation_line, write_chrome_trace
from ..model import GPT
from ..parallel.optim import flat_state, param_states
from ..parallel.parameter_server import Server, Worker
from ..parallel.ps_shards import PSLayout, gather_shards, load_flat, share_final_params
from ..runtime import print0
from .trainer import Trainer, lr_at, validation_loss
from ..services.watchdog import NoWatchdog, watchdog


class PSRun:
    def __init__(self, cfg, comm, batches, state: dict | None = None, timeline=None, timeout: float = 0,
                 shrinking: bool = False, out=None, keep: int = 1):
        """``timeout``: the hang watchdog's (0: none); ``shrinking`` (--on-failure shrink): the watchdog kills a
        stuck rank, and servers can undo a step (shrink.py); ``out``, ``keep``: where a synchronous run's servers
        checkpoint every ``--ckpt-every`` steps."""
        self.cfg, self.comm, self.batches, self.timeline = cfg, comm, batches, timeline
        self.timeout, self.shrinking, self.out, self.keep = timeout, shrinking, out, keep
        self.server, self.watchdog = None, NoWatchdog()
        self.rank = comm.Get_rank()
        self.layout = PSLayout(comm.Get_size(), cfg.servers)
        self.is_server = self.layout.is_server(self.rank)
        self.group = comm.Split(0 if self.is_server else 1, self.rank)  # servers' or workers' own communicator
        self.worker_rates = None
        self.pushes = self.applied = self.dropped = 0
        self.max_staleness = self.max_lead = 0
        self.start_step = int(state["step"]) if state is not None else 0
        self.optimizer_state = None
        if self.is_server:
            torch.manual_seed(cfg.seed)  # the same initial weights as every worker
            self.model = GPT(cfg.model)
            if state is not None:
                self.model.load_state_dict(state["model"])
                saved = checkpoint.optimizer_by_name(state["optimizer"], self.model)
                named = dict(self.model.named_parameters())
                self.optimizer_state = flat_state({named[n]: st for n, st in saved.items() if n in named},
                                                  list(named.values())) if saved else None
        else:
            self.trainer = Trainer(cfg, self.group, batches, state, timeline, sync_grads=False,
                                   slow_factor=cfg.straggler_factor(self.rank))
            self.model = self.trainer.model

    @property
    def completed(self) -> int:
        """Steps taken: a synchronous server's own; a worker defers to the servers (the most there can be)."""
        if not self.is_server:
            return self.cfg.steps
        return self.server.completed if self.server is not None else self.start_step

    def communicators(self) -> list:
        """What a failure revokes: the job's, the servers' or workers' own, and the watchdog's."""
        return [self.comm, self.group] + ([self.watchdog.comm] if hasattr(self.watchdog, "comm") else [])

    def end_step(self, steps: int) -> int:
        """The step this run stops at: ``steps``, or sooner for a synchronous run with an update budget."""
        if self.cfg.staleness == 0 and self.cfg.ps_updates is not None:
            return min(steps, self.start_step + self.cfg.ps_updates)
        return steps

    def train(self, steps: int, on_record=None) -> None:
        """Run worker steps up to ``steps``; ``on_record(StepRecord)`` receives server 0's metrics records."""
        cfg, steps = self.cfg, self.end_step(steps)
        self.comm.Barrier()  # every worker has built its model: the clock starts now for all
        self.watchdog = watchdog(self.comm, self.timeout, kill=self.shrinking)
        rate = None
        if self.is_server:
            recorder = _Recorder(cfg, self.start_step, on_record) if self.rank == 0 and on_record else None
            self.server = Server(cfg, self.comm, self.group, self.layout, self.model, lambda s: lr_at(cfg, s),
                                 recorder.record if recorder else None, self.start_step, self.optimizer_state,
                                 self.timeline, self.watchdog, self._checkpoint if self._checkpoints(steps) else None,
                                 undoable=self.shrinking)
            self.server.run(steps)
            self.applied, self.dropped = self.server.received, self.server.dropped
            self.max_staleness = max(self.server.staleness, default=0)
            self.max_lead = self.server.max_lead
        else:
            self.trainer.watchdog = self.watchdog
            worker = Worker(cfg, self.comm, self.layout, self.trainer, self.timeline)
            rate = worker.run(self.start_step, steps)
            self.pushes = worker.pushes
        self.watchdog.at(steps - 1, "end")
        share_final_params(self.comm, self.layout, self.model, self.server)
        stats = self.comm.allgather(dict(rate=rate, pushes=self.pushes, applied=self.applied, dropped=self.dropped,
                                         staleness=self.max_staleness, lead=self.max_lead))
        self.worker_rates = [s["rate"] for s in stats if s["rate"] is not None]  # steps/s of each worker, rank order
        self.pushes = sum(s["pushes"] for s in stats)  # gradient shards sent by all workers
        self.applied = sum(s["applied"] for s in stats)  # gradient shards applied by all servers
        self.dropped = sum(s["dropped"] for s in stats)  # shards that arrived after the update budget was spent
        self.max_staleness = max(s["staleness"] for s in stats)  # in optimizer updates
        self.max_lead = max(s["lead"] for s in stats)  # in worker steps
        self.watchdog.close()

    def _checkpoints(self, steps: int) -> bool:
        return self.out is not None and bool(self.cfg.ckpt_every) and self.cfg.staleness == 0 and steps > 0

    def _checkpoint(self, step: int) -> None:
        """--ckpt-every (synchronous): the servers gather their shards; server 0 writes. The end's is ``save``."""
        if step % self.cfg.ckpt_every or step == self.end_step(self.cfg.steps):
            return
        self.watchdog.at(step - 1, "checkpoint write")
        self._write(self.group, self.out, step, self.keep)  # server 0 is rank 0 of both

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

    def _write(self, comm, out, step: int, keep: int) -> None:
        state = self.full_state(comm, step, root=0)
        if state is not None:
            checkpoint.save(out, state["model"], state["optimizer"]["by_name"], step, self.cfg.to_dict(), keep=keep)

    def save(self, out, step: int, keep: int = 1) -> None:
        """checkpoint.pt from rank 0: the model and the servers' optimizer shards, by name. Collective."""
        self._write(self.comm, out, step, keep)


class _Recorder:
    """Turns server 0's per-step callbacks into metrics.jsonl records."""

    def __init__(self, cfg, start: int, sink):
        self.cfg, self.sink = cfg, sink
        self.step, self.last_t, self.last_busy, self.last_hist = start, time.perf_counter(), 0.0, Counter()

    def record(self, losses, staleness: Counter, busy_s: float, version: int) -> None:
        """One metrics record from the step's losses and the server's running totals."""
        now, cfg = time.perf_counter(), self.cfg
        window = staleness - self.last_hist
        step_s = now - self.last_t
        busy = busy_s - self.last_busy
        tokens = cfg.global_batch_size * cfg.model.block_size
        self.step += 1
        self.sink(StepRecord(step=self.step, loss=sum(losses) / len(losses), lr=lr_at(cfg, self.step - 1),
                             tokens=tokens, step_s=step_s, compute_s=None, comm_s=step_s - busy, exposed_comm_s=None,
                             tokens_per_s=tokens / step_s, server_busy_s=busy,
                             staleness={str(k): v for k, v in sorted(window.items())}, updates=version))
        self.last_t, self.last_busy, self.last_hist = now, busy_s, Counter(staleness)


def run(cfg, comm, batches, out, state=None, timeline=None, resumed_from=None, tensorboard=False, keep=1,
        timeout: float = 0, survivors=None) -> None:
    """``python -m parallel_lm.train --sync ps``: train, log from server 0, write the outputs. ``survivors``
    (--on-failure shrink): a dead rank is dropped and the run goes on (shrink.py)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    workers = p - cfg.servers

    def make_ps(cfg, comm, state):
        return PSRun(cfg, comm, batches, state, timeline, timeout, survivors is not None, out, keep)
    ps = make_ps(cfg, comm, state)
    mode = "synchronous" if cfg.staleness == 0 else (
        "fully asynchronous" if cfg.staleness is None else f"bounded staleness {cfg.staleness}")
    print0(f"parallel_lm.train: {p} ranks = {cfg.servers} server(s) + {workers} worker(s), parameter server, {mode}, "
           f"optimizer {cfg.optimizer}, precision {cfg.precision}" + (f", straggler {cfg.straggler}" if cfg.straggler else "")
           + (f", update budget {cfg.ps_updates}" if cfg.ps_updates is not None else ""))
    print0(f"model: {ps.model.num_params() / 1e6:.2f}M parameters, sharded over {cfg.servers} server(s); data: {cfg.data}, "
           f"global batch {cfg.global_batch_size} = {workers} worker(s) x {cfg.global_batch_size // workers} sequences"
           + (f" (or {cfg.global_batch_size // workers + 1}, each worker's loss weighted by its rows)"
              if cfg.global_batch_size % workers else ""))
    if ps.start_step:
        print0(f"resumed from {resumed_from} at step {ps.start_step}")
    tb = out / "tb" if tensorboard else None
    metrics = MetricsWriter(out / "metrics.jsonl" if out is not None and rank == 0 else None, resume=state is not None,
                            tensorboard=tb, resumed_step=ps.start_step)
    log_every = max(1, (cfg.steps - ps.start_step) // 10)

    def on_record(rec):
        metrics.write(rec)
        if rec.step % log_every == 0 or rec.step == cfg.steps:
            print0(f"step {rec.step}/{cfg.steps}: loss {rec.loss:.3f}, {rec.tokens_per_s:,.0f} tok/s, "
                   f"server busy {100 * rec.server_busy_s / rec.step_s:.0f}%, staleness {rec.staleness}")
    t0 = time.perf_counter()
    while True:
        try:
            ps.train(cfg.steps, on_record if rank == 0 else None)
            if survivors:
                survivors.settle()
            break
        except MPI.Exception as error:
            if survivors is None or not shrink.is_failure(error):
                raise
            ps.watchdog.close(wait=False)
            ps, _ = survivors.recover_ps(ps, error, make_ps)
            comm, cfg = ps.comm, ps.cfg
            rank = comm.Get_rank()
            metrics = metrics.reopened(out / "metrics.jsonl" if out is not None and rank == 0 else None, tb,
                                       ps.start_step, None)
    wall = time.perf_counter() - t0
    metrics.close()
    print0(f"gradient shards pushed {ps.pushes}, applied {ps.applied}" +
           (f", dropped after the budget {ps.dropped}" if cfg.ps_updates is not None else "") +
           f"; max staleness {ps.max_staleness} updates; max lead of a worker over the slowest {ps.max_lead} step(s); "
           f"worker steps/s: {', '.join(f'{r:.1f}' for r in ps.worker_rates)}; {wall:.2f} s")
    step = ps.end_step(cfg.steps) if cfg.staleness == 0 else cfg.steps  # asynchronous: the step asked for
    if out is not None:
        ps.save(out, step, keep)
    if timeline:
        per_rank = comm.gather(timeline.events, root=0)
        if rank == 0:
            write_chrome_trace(out / "trace.json", per_rank)
    if rank == 0:
        print0(validation_line(validation_loss(ps.model, batches, cfg, 0, cfg.global_batch_size)))
        if out is not None:
            print0(f"wrote {out / 'metrics.jsonl'}, {out / 'checkpoint.pt'}" + (f", {out / 'trace.json'}" if timeline else "")
                   + (f", {out / 'tb'}/" if tensorboard else ""))
    comm.Barrier()
