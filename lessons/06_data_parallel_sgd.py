"""Lesson 06: data-parallel SGD by hand — and why it equals training on one machine.

    mpiexec -n 4 python lessons/06_data_parallel_sgd.py

Data parallelism: every rank holds the whole model; each step, the global
batch of B sequences is split into K shards of B/K, rank r computes the
gradient of *its* shard's mean loss, the ranks average their gradients
with an all-reduce, and every rank applies the same update. Because

    grad( mean over B ) = (1/K) * sum over ranks of grad( mean over B/K )

the averaged gradient is the single-machine full-batch gradient, up to the
order in which floating-point numbers are added. So K ranks train exactly
the model one rank would, only faster.

This lesson does it with nothing but torch for the math and one explicit
all-reduce for the communication:
1. flatten every parameter's .grad into one NumPy buffer (a copy here;
   lesson 07 removes it with buckets),
2. ``allreduce(buf, comm, "ring")`` and divide by K,
3. copy back and take a plain SGD step.
Rank 0 meanwhile trains a second copy of the model on the *whole* global
batch, alone, and the lesson prints how far apart the two are after each
step. It fails if they drift beyond float32 rounding, or if the ranks
disagree with each other by even one bit.
"""
import hashlib

import numpy as np
import torch
from mpi4py import MPI

from parallel_lm.comm import allreduce
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.runtime import check, start_script, print0

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
B, steps, lr = 8 * K, 4, 0.5
cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
batches = Batches.from_bytes(load_corpus("synthetic"), cfg.block_size, seed=0)

torch.manual_seed(0)
model = GPT(cfg)                     # the data-parallel replica on every rank
torch.manual_seed(0)
alone = GPT(cfg)                     # rank 0's single-machine reference (same initial weights)
params = list(model.parameters())
n = sum(p.numel() for p in params)
grads = np.empty(n, dtype=np.float32)  # (n,) every gradient, flattened


def sgd(m, flat_grad):
    offset = 0
    with torch.no_grad():
        for p in m.parameters():
            p -= lr * torch.from_numpy(flat_grad[offset: offset + p.numel()]).view_as(p)
            offset += p.numel()


print0(f"{K} ranks, global batch {B} = {K} x {B // K} sequences, {n:,} parameters, plain SGD lr {lr}\n")
print0(f"{'step':>4} {'loss (K ranks)':>15} {'loss (1 rank)':>14} {'max |grad diff|':>16} {'max |param diff|':>17}")
for step in range(steps):
    # 1. my shard of the global batch: rows rank*B/K .. (rank+1)*B/K
    x, y = batches.rows(step, "train", B, rank * B // K, (rank + 1) * B // K)
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    # 2. average the gradients over ranks, explicitly
    offset = 0
    for p in params:
        grads[offset: offset + p.numel()] = p.grad.reshape(-1).numpy()
        offset += p.numel()
    allreduce(grads, comm, algorithm="ring")
    grads /= K
    sgd(model, grads)
    loss_k = comm.allreduce(loss.item()) / K

    # The reference: one process, the whole global batch.
    if rank == 0:
        xa, ya = batches.rows(step, "train", B, 0, B)
        alone.zero_grad()
        _, loss_1 = alone(xa, ya)
        loss_1.backward()
        full = torch.cat([p.grad.reshape(-1) for p in alone.parameters()]).numpy()
        grad_diff = float(np.abs(full - grads).max())
        sgd(alone, full)
        param_diff = max(float((a - b).detach().abs().max()) for a, b in zip(alone.parameters(), model.parameters()))
        print0(f"{step + 1:>4} {loss_k:>15.6f} {loss_1.item():>14.6f} {grad_diff:>16.2e} {param_diff:>17.2e}")
        check(grad_diff < 1e-5 and param_diff < 1e-5, f"step {step + 1}: data-parallel drifted from 1-rank training")

digest = hashlib.sha1(torch.cat([p.detach().reshape(-1) for p in params]).numpy().tobytes()).hexdigest()
check(len(set(comm.allgather(digest))) == 1, "ranks hold different parameters")
print0("\nEvery rank holds bitwise-identical parameters, equal to 1-rank training up to float32 rounding.")
print0("lesson 06 OK")

# Exercises
# 1. Drop `grads /= K`. With SGD the run now differs from 1-rank training: by how much,
#    and why would AdamW hide most of it (look at its update rule)?
# 2. Give rank 0 a different seed for its replica. Which check fails first?
# 3. Split the global batch unevenly (rank 0 takes more rows). What must change in the
#    averaging to stay exact? (Hint: weight each rank's gradient by its rows.)
# 4. parallel_lm.train does all of this plus buckets, overlap and AdamW:
#    compare `mpiexec -n 4 python -m parallel_lm.train --steps 20` with `-n 1`.
# Graded: python -m parallel_lm.exercises start 06.1, then check 06.1 (docs/course.md)
