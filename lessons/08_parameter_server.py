"""Lesson 08: the parameter server — synchronous vs asynchronous updates.

    mpiexec -n 4 python lessons/08_parameter_server.py

Before all-reduce took over, distributed training ran through *parameter
servers* (Dean et al., "Large Scale Distributed Deep Networks", 2012; Li et
al., OSDI 2014): a few server ranks own the parameters and the optimizer;
workers pull the parameters, compute a gradient on their data and push it
back. ``parallel_lm/parallel/parameter_server.py`` builds one from Send and
Recv: rank 0 serves here, ranks 1..3 work.

Synchronous (staleness 0): the server waits for every worker's gradient of
step t, averages, updates, then answers every pull. That is data
parallelism again, with the sum done at one place: part 1 checks that it
reaches the same parameters as a single process.

Asynchronous: the server applies each gradient the moment it arrives and
answers at once, so nobody waits for a slow worker, but a gradient may
have been computed on parameters several updates old (*stale*). Bounded
staleness (stale synchronous parallel, Ho et al. 2013) lets a worker run
at most s steps ahead of the slowest. Part 2 slows one worker 4x and
compares wall time, loss and the staleness of the applied gradients.

Part 3 asks the cost model: the server's one link carries every worker's
push and pull, 2W messages of the full model per step, while ring
all-reduce moves about 2n bytes per rank whatever W is.
"""
import time

import numpy as np
import torch
from mpi4py import MPI

from parallel_lm.config import TrainConfig
from parallel_lm.costmodel.formulas import Network, allreduce_ring, parameter_server_sync
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.parallel.ps_shards import flat_params
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.training.trainer import Trainer
from parallel_lm.training.trainer_ps import PSRun

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
check(p >= 3, "run with at least 3 ranks: mpiexec -n 4 python lessons/08_parameter_server.py")
W = p - 1
model = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
batches = Batches.from_bytes(load_corpus("synthetic"), model.block_size, seed=0)
base = TrainConfig(model=model, global_batch_size=4 * W, steps=8, data="synthetic", sync="ps", servers=1)



def train(run, on_record=None):
    """Every step of ``run`` on this rank (a server's, or a worker's push and pull), then the end: the servers'
    shards to every rank. ``on_record``: rank 0's (server 0's) record of each step."""
    for step in range(run.start_step, run.cfg.steps):
        rec = run.train_step(step)
        if rec is None:  # done early: an update budget spent
            break
        if on_record and rank == 0:
            on_record(rec)
    run.finish()


# Part 1: synchronous PS == one process.
run = PSRun(base, comm, batches)
train(run)
ref = None
if rank == 0:
    alone = Trainer(TrainConfig(**{**base.to_dict(), "model": model, "sync": "allreduce"}), MPI.COMM_SELF, batches)
    for s in range(base.steps):
        alone.train_step(s)
    ref = flat_params(alone.model).numpy()
    alone.close()
diff = float(np.abs(flat_params(run.model).numpy() - comm.bcast(ref, root=0)).max())
print0(f"part 1: synchronous PS, 1 server + {W} workers, {base.steps} steps: max |param - 1-process param| = {diff:.1e}")
check(diff < 2e-5, "synchronous PS drifted from single-process training")
check(run.pushes == run.applied == base.steps * W, "a gradient was lost or applied twice")

# Part 2: a straggler (rank 1, 4x slower), sync vs bounded vs async.
print0("\npart 2: rank 1 computes 4x slower; 40 steps per worker")
print0(f"{'mode':>14} {'wall s':>7} {'final loss':>10} {'max lead':>8} {'staleness histogram (updates: count)':>40}")
for name, staleness in (("sync", 0), ("staleness 2", 2), ("async", None)):
    cfg = TrainConfig(**{**base.to_dict(), "model": model, "steps": 40, "staleness": staleness, "straggler": "1:4"})
    run = PSRun(cfg, comm, batches)
    hist = {}
    t0 = time.perf_counter()
    train(run, on_record=lambda rec: hist.update(
        {k: hist.get(k, 0) + v for k, v in rec.staleness.items()}) or hist.__setitem__("loss", rec.loss))
    wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    loss = comm.bcast(hist.pop("loss", None), root=0)
    hist = comm.bcast(hist, root=0)
    print0(f"{name:>14} {wall:>7.2f} {loss:>10.4f} {run.max_lead:>8} {str(dict(sorted(hist.items(), key=lambda kv: int(kv[0])))):>40}")
    check(run.pushes == run.applied, f"{name}: pushes {run.pushes} != applied {run.applied}")
    check(staleness is None or run.max_lead <= staleness, f"{name}: a worker ran {run.max_lead} steps ahead")

# Part 3: what the cost model says about the server's link.
net = Network(alpha_s=50e-6, beta_s_per_byte=1 / 1.25e9, gamma_s_per_byte=1 / 5e9)  # an illustrative 10 GbE
n = 4 * 124e6  # GPT-2 small's gradients in float32
print0("\npart 3: communication per step for 124M parameters on a 10 GbE-like network (cost formulas)")
print0(f"{'workers':>8} {'PS, 1 server':>13} {'PS, 8 servers':>14} {'ring all-reduce':>16}")
for workers in (4, 16, 64):
    print0(f"{workers:>8} {parameter_server_sync(n, workers).time_s(net):>12.1f}s "
           f"{parameter_server_sync(n, workers, 8).time_s(net):>13.1f}s {allreduce_ring(n, workers).time_s(net):>15.2f}s")
print0("lesson 08 OK")

# Exercises
# 1. Change the sharding rule (PSLayout.shard) to give server 0 twice as much as the others.
#    Which server becomes the bottleneck? Measure server_busy_s in metrics.jsonl with
#    `mpiexec -n 6 python -m parallel_lm.train --sync ps --servers 2 --out runs/ps`.
# 2. Predict from part 3's formula how the PS step time grows from 3 to 7 workers on this
#    machine, then measure tokens/s with -n 4 and -n 8 --sync ps.
# 3. In part 2 every worker runs the same number of steps, so async cannot finish first: the
#    straggler still has to do all of its own. Give the job an update budget instead, so it ends
#    after N applied updates whoever made them, and compare the wall time of sync and async:
#      mpiexec -n 4 python -m parallel_lm.train --sync ps --ps-updates 60 --steps 1000 --straggler 3:4 \
#          --global-batch-size 6 --staleness 0      (then --staleness inf)
#    Which finishes first now? A synchronous update averages 3 workers' gradients, an asynchronous
#    one carries one worker's: compare the validation loss per update too.
# Graded: python -m parallel_lm.exercises start 08.1, then check 08.1 (docs/course.md)
