"""A parameter server: server ranks own the parameters and the optimizer, workers compute gradients.

Layout (``PSLayout``): ranks 0..k-1 are servers, the rest workers. The
model's parameters, flattened in ``model.parameters()`` order, are cut into
k contiguous shards by ``chunk_offsets(n, k)``: server s owns elements
``offs[s]:offs[s+1]`` and the optimizer state for them (``ShardOptimizer``:
AdamW or SGD, the same update every other layout makes).

One worker step: compute the gradient of its share of the global batch,
Send each server its shard of the gradient (plus the loss and the version
of the parameters it used), then Recv the fresh shard from every server.
All messages are explicit mpi4py point-to-point on NumPy buffers.

- ``staleness 0`` (synchronous): each server receives every worker's
  gradient of step t (in worker order, so the sum is deterministic),
  averages, clips by the global norm (the servers all-reduce their squared
  norms) and takes one optimizer step, then answers all pulls. This is
  exactly data-parallel training (tests check it).
- ``staleness s >= 1`` (stale synchronous parallel, Ho et al., NIPS 2013)
  and ``None`` (fully asynchronous, as Downpour SGD, Dean et al. 2012): a
  server applies each gradient the moment it arrives (one optimizer step per
  gradient, the worker having clipped it), and answers a worker's pull only
  once that worker is at most s steps ahead of the slowest. Each applied
  gradient's staleness (optimizer updates applied since the parameters it
  was computed on were read) is recorded, and so is the largest lead in
  steps of a pushing worker over the slowest, which the bound caps at s.

Ending. A worker's last push needs no reply. With an update budget
(``--ps-updates N``), an asynchronous server that has applied N updates
answers every later push, and every worker it holds back, with a stop
(version -1) and drops the gradient; a worker told to stop by one server
says goodbye (a push with version -1) to the servers that answered it
normally, so every server knows when every worker is gone. A synchronous
server's updates are its steps: the budget just ends the run after N.
At the end each server broadcasts its shard so every rank holds the full
model.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter

import numpy as np
import torch
from mpi4py import MPI

from ..faults import maybe_fail
from .optim import ShardOptimizer, clip_coefficient, decay_mask
from .ps_shards import PSLayout, flat_params, load_flat

TAG_PUSH, TAG_PULL = 31, 32
STOP = -1.0  # in the version slot: a server's "stop" reply, or a worker's goodbye


def _span(timeline, name):
    return timeline.span(name) if timeline else contextlib.nullcontext()


class Server:
    def __init__(self, cfg, comm, servers_comm, layout: PSLayout, model, lr_at, start: int = 0, steps: int = 0,
                 optimizer_state: dict | None = None, timeline=None, undoable: bool = False):
        """``servers_comm``: the server ranks alone (for the global gradient norm in sync mode);
        ``lr_at(step)``: the learning rate; ``start``: the step reached (resuming); ``steps``: the step the
        workers stop at (asynchronous: a worker's push of its last step wants no reply);
        ``optimizer_state``: {kind: flat tensor over the whole model} to resume from; ``undoable``: keep the
        shard as it was before each synchronous step, so that ``rewind`` can undo it. ``watchdog``, when set,
        is told what the server waits for."""
        self.cfg, self.comm, self.layout, self.lr_at = cfg, comm, layout, lr_at
        self.start, self.steps, self.timeline = start, steps, timeline
        self.rank = comm.Get_rank()
        n = sum(p.numel() for p in model.parameters())
        self.lo, self.hi = layout.shard(n, self.rank)
        self.params = flat_params(model)[self.lo:self.hi].clone()  # (shard,) fp32 master copy
        self.opt = ShardOptimizer(self.params, decay_mask(model.parameters())[self.lo:self.hi], cfg.optimizer, cfg.lr,
                                  cfg.weight_decay)
        if optimizer_state:
            self.opt.load({k: v if v.dim() == 0 else v[self.lo:self.hi] for k, v in optimizer_state.items()})
        self.servers = servers_comm
        self.version = 0  # optimizer steps taken on this shard in this run
        self.received = 0  # gradient pushes taken into an update (each exactly once)
        self.dropped = 0  # pushes that arrived after the update budget was spent
        self.max_lead = 0  # most steps a pushing worker was ahead of the slowest (<= the staleness bound)
        self.busy_s = 0.0
        self.staleness = Counter()
        self.outstanding = []  # (request, buffer) of replies in flight
        self.before = None  # synchronous: (values, optimizer state) before the last step, to undo it (rewind)
        self.watchdog, self.undoable = None, undoable
        self.push_buf = np.empty(self.hi - self.lo + 2, np.float32)  # (shard + 2,): gradient, loss, version used
        # asynchronous: steps each worker has pushed, the workers done, those waiting for their pull
        self.clock, self.done, self.waiting = dict.fromkeys(layout.workers, start), set(), []

    def _reply(self, worker: int, stop: bool = False) -> None:
        """Send the shard (or a stop) without waiting for it to be received.

        A blocking Send could deadlock with several servers: server A waits for
        worker x to receive, x waits to push to server B, B waits for worker y
        to receive, y waits to push to A. A server that never blocks on a send
        always gets back to receiving, which breaks every such cycle.
        """
        out = np.empty(self.hi - self.lo + 1, np.float32)  # (shard + 1,): parameters, then version
        out[:-1] = self.params.numpy()
        out[-1] = STOP if stop else self.version
        self.outstanding = [(r, b) for r, b in self.outstanding if not r.Test()]
        self.outstanding.append((self.comm.Isend(out, dest=worker, tag=TAG_PULL), out))

    def _clip_sync(self, grad: torch.Tensor) -> None:
        if self.cfg.grad_clip <= 0:
            return
        coef = clip_coefficient(float(grad.double().pow(2).sum()), self.cfg.grad_clip, (self.servers,))
        if coef < 1:
            grad.mul_(coef)

    def step(self, t: int, reply: bool) -> list[float] | None:
        """Serve one step ``t``: synchronous, every worker's push of step t summed in worker order, one update,
        then (``reply``: not the run's last step) every worker's pull answered; asynchronous, the pushes as they
        come, until one update per worker has been applied (a window, what server 0 records as a step). Returns
        the step's (or window's) worker losses; None once every worker has finished and no window is left."""
        if self.cfg.staleness == 0:
            return self._step_sync(t, reply)
        return self._window_async()

    def finish(self) -> None:
        """Wait for the replies still in flight (at the end, before the final collectives)."""
        MPI.Request.Waitall([r for r, _ in self.outstanding])
        self.outstanding = []

    def _step_sync(self, t: int, reply: bool) -> list[float]:
        workers = self.layout.workers
        buf = self.push_buf
        maybe_fail(t)
        if self.watchdog:
            self.watchdog.at(t, "gradient sync")
        total, losses = torch.zeros_like(self.params), []
        for w in workers:  # fixed order: a deterministic sum
            self.comm.Recv(buf, source=w, tag=TAG_PUSH)
            t0 = time.perf_counter()
            total += torch.from_numpy(buf[:-2])
            self.received += 1
            losses.append(float(buf[-2]))
            self.staleness[self.version - int(buf[-1])] += 1
            self.busy_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        with _span(self.timeline, "apply"):
            total /= len(workers)
            self._clip_sync(total)
            if self.undoable:
                self.before = (self.params.clone(), self.opt.state())
            self.opt.step(total, self.lr_at(t), self.params)
        self.version += 1
        if reply:
            for w in workers:
                self._reply(w)
        self.busy_s += time.perf_counter() - t0
        return losses

    @property
    def completed(self) -> int:
        """Steps this (synchronous) server's shard has taken."""
        return self.start + self.version

    def rewind(self, step: int) -> None:
        """Undo the last step if this shard is past ``step`` (another server could not finish it: a worker died)."""
        if self.completed > step:
            values, state = self.before
            self.params.copy_(values)
            self.opt.restore(values, state)
            self.version -= 1

    def _window_async(self) -> list[float] | None:
        """Apply pushes as they arrive until one per worker has been applied, or every worker is done."""
        workers, bound, budget = self.layout.workers, self.cfg.staleness, self.cfg.ps_updates
        buf, status, window = self.push_buf, MPI.Status(), []
        clock, done, waiting = self.clock, self.done, self.waiting
        while len(done) < len(workers) and len(window) < len(workers):
            if self.watchdog:
                self.watchdog.at(min(clock.values()), "gradient sync")
            self.comm.Recv(buf, source=MPI.ANY_SOURCE, tag=TAG_PUSH, status=status)
            t0 = time.perf_counter()
            w = status.Get_source()
            if buf[-1] == STOP:  # goodbye: another server stopped this worker
                done.add(w)
                continue
            spent = budget is not None and self.version >= budget
            if spent:
                self.dropped += 1
            else:
                self.max_lead = max(self.max_lead, clock[w] - min(clock.values()))
                self.staleness[self.version - int(buf[-1])] += 1
                with _span(self.timeline, "apply"):
                    self.opt.step(torch.from_numpy(buf[:-2]), self.lr_at(self.start + self.version // len(workers)),
                                  self.params)
                self.version += 1
                self.received += 1
                window.append(float(buf[-2]))
            clock[w] += 1
            if clock[w] >= self.steps:  # its last push: no reply wanted
                done.add(w)
            elif spent:
                self._reply(w, stop=True)
                done.add(w)
            else:
                waiting.append(w)
            if budget is not None and self.version >= budget:  # stop everyone held back
                for v in waiting:
                    self._reply(v, stop=True)
                    done.add(v)
                waiting.clear()
            slowest = min(clock.values())
            for v in list(waiting):  # answer only workers within the staleness bound of the slowest
                if bound is None or clock[v] - slowest <= bound:
                    self._reply(v)
                    waiting.remove(v)
            self.busy_s += time.perf_counter() - t0
        return window if len(window) == len(workers) else None


class Worker:
    def __init__(self, cfg, comm, layout: PSLayout, trainer, timeline=None):
        self.cfg, self.comm, self.layout, self.trainer, self.timeline = cfg, comm, layout, trainer, timeline
        self.n = sum(p.numel() for p in trainer.model.parameters())
        self.shards = [layout.shard(self.n, s) for s in range(layout.servers)]
        self.versions = [0] * layout.servers
        self.pushes = 0
        # One push buffer (shard + 2: gradient, loss, version used) and one pull buffer
        # (shard + 1: parameters, version) per server, reused every step.
        self.push_bufs = [np.empty(hi - lo + 2, np.float32) for lo, hi in self.shards]
        self.pull_bufs = [np.empty(hi - lo + 1, np.float32) for lo, hi in self.shards]
        self.flat = flat_params(trainer.model).cpu()  # messages travel through host memory (the model may be on a GPU)

    def _goodbye(self, servers) -> None:
        for s in servers:
            out = self.push_bufs[s]
            out[-1] = STOP
            self.comm.Send(out, dest=s, tag=TAG_PUSH)

    def step(self, t: int, last: bool) -> tuple[float, bool]:
        """Step ``t``: this worker's gradient pushed to every server, then (unless ``last``: the run's last step,
        whose push wants no reply) the fresh shards pulled into the model. Returns (its loss, whether a server
        said stop: the update budget is spent, and this worker is done)."""
        model = self.trainer.model
        self.trainer.watchdog.at(t, "forward/backward")
        loss = self.trainer.local_gradient(t)
        self.trainer.watchdog.at(t, "gradient sync")
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).cpu()
        if self.cfg.staleness != 0 and self.cfg.grad_clip > 0:  # async: each gradient clipped on its own
            grad.mul_(clip_coefficient(float(grad.double().pow(2).sum()), self.cfg.grad_clip))
        with _span(self.timeline, "push"):
            for s, (lo, hi) in enumerate(self.shards):
                out = self.push_bufs[s]
                out[:-2] = grad[lo:hi].numpy()
                out[-2], out[-1] = loss, self.versions[s]
                self.comm.Send(out, dest=s, tag=TAG_PUSH)
                self.pushes += 1
        if last:
            return loss, False
        stopped = []
        with _span(self.timeline, "pull"):
            for s, (lo, hi) in enumerate(self.shards):
                reply = self.pull_bufs[s]
                self.comm.Recv(reply, source=s, tag=TAG_PULL)
                if reply[-1] == STOP:
                    stopped.append(s)
                    continue
                self.flat[lo:hi] = torch.from_numpy(reply[:-1])
                self.versions[s] = int(reply[-1])
        if stopped:
            self._goodbye([s for s in range(len(self.shards)) if s not in stopped])
            return loss, True
        load_flat(model, self.flat)
        return loss, False
