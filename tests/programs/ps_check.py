"""Run under mpiexec -n K with argv: SERVERS. Parameter-server checks:

1. synchronous PS (AdamW and SGD) after 5 steps equals 1-rank training (max abs difference printed);
2. with random artificial delays on the workers, bounded (2) and unbounded staleness:
   every pushed gradient applied exactly once, the lead over the slowest worker within the bound,
   200 asynchronous steps without deadlock.
Reports one result per case (report.py) on rank 0; exits 1 if any fails.
"""
import random
import sys
import time

import numpy as np
import torch
from mpi4py import MPI
from noise import tolerance
from report import case

from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.parallel.ps_shards import flat_params
from parallel_lm.runtime import start_script, on_rank0
from parallel_lm.training.trainer import Trainer
from parallel_lm.training.trainer_ps import PSRun

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
servers = int(sys.argv[1])
workers = p - servers
model = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
batches = Batches.from_bytes(load_corpus("synthetic"), model.block_size, 7)
failures = []


def train(run):
    """Every step of ``run`` on this rank, then the servers' shards to every rank (as train_loop.run does)."""
    for step in range(run.start_step, run.cfg.steps):
        if run.train_step(step) is None:
            break
    run.finish()


def report(name, ok, line, **measured):
    if rank == 0:
        case(name, ok, line, **measured)


for optimizer in ("adamw", "sgd"):
    cfg = TrainConfig(model=model, global_batch_size=4 * workers * 3, steps=5, warmup_steps=2, seed=7, lr=0.05 if optimizer == "sgd" else 3e-3,
                      data="synthetic", optimizer=optimizer, sync="ps", servers=servers, staleness=0)

    def one(c):
        ref = Trainer(c, MPI.COMM_SELF, batches)
        for s in range(c.steps):
            ref.train_step(s)
        params = {"params": flat_params(ref.model).clone()}
        ref.close()
        return params

    # SGD: the parameters differ by lr x a few fp32 roundings of the gradient on any CPU; AdamW: noise.py
    ref_cfg = TrainConfig(**{**cfg.to_dict(), "model": model, "sync": "allreduce"})

    def reference_and_tolerance():
        reference = one(ref_cfg)
        return reference["params"].numpy(), tolerance(one, ref_cfg, reference) if optimizer == "adamw" else 2e-5

    reference, tol = on_rank0(comm, reference_and_tolerance)
    run = PSRun(cfg, comm, batches)
    train(run)
    diff = float(np.abs(flat_params(run.model).numpy() - reference).max())
    worst = comm.allreduce(diff, op=MPI.MAX)
    ok = worst <= tol and run.pushes == run.applied == cfg.steps * workers * servers
    report(f"sync {optimizer}", ok, f"sync PS ({optimizer}, {servers} server(s), {workers} workers) vs 1 rank: "
           f"max |param diff| {worst:.2e} (tol {tol:.1e}); pushes {run.pushes} applied {run.applied}",
           diff=worst, tol=tol, pushes=run.pushes, applied=run.applied)
    if not ok:
        failures.append(optimizer)

for staleness, steps in ((2, 60), (None, 200)):
    cfg = TrainConfig(model=model, global_batch_size=2 * workers, steps=steps, seed=7, data="synthetic",
                      sync="ps", servers=servers, staleness=staleness)
    run = PSRun(cfg, comm, batches)
    if not run.is_server:  # random artificial delays: workers drift apart
        rng = random.Random(rank)
        inner = run.trainer.local_gradient

        def delayed(step, inner=inner, rng=rng):
            time.sleep(rng.random() * 0.004 * (rank - servers + 1))
            return inner(step)
        run.trainer.local_gradient = delayed
    t0 = time.perf_counter()
    train(run)
    bound_ok = staleness is None or run.max_lead <= staleness
    ok = run.pushes == run.applied == steps * workers * servers and bound_ok
    same = len(set(comm.allgather(flat_params(run.model).numpy().tobytes()))) == 1
    ok = ok and same
    report(f"staleness {staleness}", ok, f"staleness {staleness}: {steps} steps x {workers} workers in "
           f"{time.perf_counter() - t0:.1f} s; pushes {run.pushes} applied {run.applied}; max lead {run.max_lead} "
           f"(bound {staleness}); max staleness {run.max_staleness} updates; final params equal on all ranks: {same}",
           pushes=run.pushes, applied=run.applied, max_lead=run.max_lead, same_on_all_ranks=same)
    if not ok:
        failures.append(f"staleness {staleness}")

sys.exit(1 if failures else 0)
