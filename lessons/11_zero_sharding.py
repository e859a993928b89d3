"""Lesson 11: ZeRO — stop keeping K copies of the optimizer.

    mpiexec -n 4 python lessons/11_zero_sharding.py

Data parallelism keeps everything on every rank: for Psi parameters in
fp32 with AdamW that is 4 Psi bytes of weights + 4 Psi of gradients +
8 Psi of moments = 16 Psi per rank, K times over. ZeRO (Rajbhandari et al.
2020) shards instead:

- stage 1: rank r keeps the optimizer state (and an fp32 copy) only for
  its 1/K of the parameters. After backward a **reduce-scatter** gives it
  the summed gradient of just that part; it updates it; an **all-gather**
  sends the new values to everyone. Reduce-scatter + all-gather *is* a
  ring all-reduce (lesson 03), so the bytes sent do not change;
- stage 2: the full gradient is never stored either: each bucket of
  gradients is reduce-scattered as soon as backward fills it, and only this
  rank's part is kept.

We train the same model plain, with stage 1 and with stage 2, print the
bytes each rank holds beside the formula (parallel/zero.py), and check
that all three train exactly what one process does.
"""
import torch
from mpi4py import MPI

from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.parallel.zero import memory_formula
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
cfg = GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=32)
batches = Batches.from_bytes(load_corpus("synthetic"), cfg.block_size, seed=0)
n = GPT(cfg).num_params()
base = TrainConfig(model=cfg, global_batch_size=4 * K, data="synthetic", steps=4, warmup_steps=1, bucket_mb=0.1)

reference = None
if rank == 0:
    alone = Trainer(base, MPI.COMM_SELF, batches)
    for s in range(base.steps):
        alone.train_step(s)
    reference = alone.full_state_dict()

print0(f"Psi = {n:,} parameters on {K} ranks; bytes per rank (measured after {base.steps} steps | formula)\n")
print0(f"{'':>8} {'params':>20} {'grads':>20} {'optimizer':>20} {'total':>9}  vs 1 process")
totals = {}
for stage in (0, 1, 2):
    trainer = Trainer(TrainConfig(**{**base.to_dict(), "model": cfg, "zero": stage}), comm, batches)
    for s in range(base.steps):
        trainer.train_step(s)
    have, want = trainer.memory(), memory_formula(n, stage, K)
    totals[stage] = sum(have[k] for k in want)
    cells = " ".join(f"{have[k] / 1e3:>8.1f}k | {want[k] / 1e3:>7.1f}k" for k in want)
    state = trainer.full_state_dict()
    if rank == 0:
        diff = max(float((state[k] - v).abs().max()) for k, v in reference.items())
        print0(f"{'ZeRO-' + str(stage) if stage else 'plain':>8} {cells} {totals[stage] / 1e3:>8.1f}k  params differ by {diff:.1e}")
        check(diff < 2e-5, f"ZeRO-{stage} must train what one process trains")
    check(all(abs(have[k] - want[k]) <= 0.01 * want[k] for k in want),
          f"ZeRO-{stage}'s memory must be what the formula says")
    trainer.close()
print0(f"\nZeRO-1 holds {totals[1] / totals[0]:.2f} and ZeRO-2 {totals[2] / totals[0]:.2f} of plain data parallelism's "
       f"bytes per rank (formula: {(8 + 12 / K) / 16:.2f} and {(4 + 16 / K) / 16:.2f}).")
check(totals[2] < totals[1] < totals[0], "each stage must hold less")
print0("lesson 11 OK")

# Exercises
# 1. At what K does ZeRO-2 hold less than a quarter of plain data parallelism's bytes? Check it
#    with mpiexec -n 8.
# 2. Stage 3 shards the parameters too: each layer's weights are all-gathered just before its
#    forward and backward. Count the extra bytes per step, and write it as a third branch of zero.py.
# 3. With --zero 2 and gradient accumulation, parallel/zero.py reduce-scatters every micro-batch.
#    Why, and what would it cost in memory to reduce only on the last one?
# Graded: python -m parallel_lm.exercises start 11.1, then check 11.1 (docs/course.md)
