"""Training through a parameter server (``--sync ps``): wires parallel/parameter_server.py to the trainer.

Ranks 0..k-1 serve, the others work. Server 0 writes the per-step metrics;
at the end every rank holds the trained model (servers broadcast their
shards), so checkpoint.pt has the same full state_dict as data-parallel
training.
"""
from __future__ import annotations

import time
from collections import Counter

import torch

from .metrics import StepRecord
from .model import GPT
from .parallel.parameter_server import PSLayout, Server, Worker, share_final_params
from .trainer import Trainer, lr_at


class PSRun:
    def __init__(self, cfg, comm, batches):
        self.cfg, self.comm, self.batches = cfg, comm, batches
        self.rank = comm.Get_rank()
        self.layout = PSLayout(comm.Get_size(), cfg.servers)
        self.is_server = self.layout.is_server(self.rank)
        self.group = comm.Split(0 if self.is_server else 1, self.rank)  # servers' or workers' own communicator
        self.worker_rates = None
        self.pushes = self.applied = 0
        self.max_staleness = self.max_lead = 0
        if self.is_server:
            torch.manual_seed(cfg.seed)  # the same initial weights as every worker
            self.model = GPT(cfg.model)
        else:
            self.trainer = Trainer(cfg, self.group, batches, sync_grads=False, slow_factor=cfg.straggler_factor(self.rank))
            self.model = self.trainer.model

    def train(self, steps: int, on_record=None) -> None:
        """Run ``steps`` worker steps; ``on_record(StepRecord)`` receives server 0's metrics records."""
        cfg = self.cfg
        self.comm.Barrier()  # every worker has built its model: the clock starts now for all
        if self.is_server:
            recorder = _Recorder(cfg, len(self.layout.workers), on_record) if self.rank == 0 and on_record else None
            server = Server(cfg, self.comm, self.group, self.layout, self.model, lambda s: lr_at(cfg, s),
                            recorder.record if recorder else None)
            server.run(steps)
            self.applied = server.received
            self.max_staleness = max(server.staleness)
            self.max_lead = server.max_lead
            rates = None
        else:
            server = None
            worker = Worker(cfg, self.comm, self.layout, self.trainer)
            rates = worker.run(steps)
            self.pushes = worker.pushes
        share_final_params(self.comm, self.layout, self.model, server)
        stats = self.comm.allgather((rates, self.pushes, self.applied, self.max_staleness, self.max_lead))
        self.worker_rates = [s[0] for s in stats if s[0] is not None]  # steps/s of each worker, in rank order
        self.pushes = sum(s[1] for s in stats)  # gradient shards sent by all workers
        self.applied = sum(s[2] for s in stats)  # gradient shards applied by all servers
        self.max_staleness = max(s[3] for s in stats)  # in optimizer updates
        self.max_lead = max(s[4] for s in stats)  # in worker steps


class _Recorder:
    """Turns server 0's per-step callbacks into metrics.jsonl records."""

    def __init__(self, cfg, workers: int, sink):
        self.cfg, self.workers, self.sink = cfg, workers, sink
        self.step, self.last_t, self.last_busy, self.last_hist = 0, time.perf_counter(), 0.0, Counter()

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
