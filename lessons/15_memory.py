"""Lesson 15: memory — where the bytes go, and three ways to need fewer of them.

    mpiexec -n 4 python lessons/15_memory.py

A rank training a GPT holds four things:
- parameters (4 bytes each in fp32), gradients (4), optimizer state
  (AdamW: two moments, 8): 16 Ψ bytes for Ψ parameters, whatever the batch;
- activations: what the forward pass keeps for backward. They grow with
  the micro-batch and the sequence, not with Ψ, and for long sequences
  they dominate.

1. We measure all four on one process and set each beside its formula.
   The activations are counted the way autograd stores them (every tensor
   saved for backward, each storage once): Korthikanti et al.'s per-layer
   count, adapted to this model (fp32, no dropout, a fused attention kernel
   that keeps a log-sum-exp per row instead of the s x s scores).
2. ZeRO-3 shards the parameters too (lesson 11 sharded the rest): each
   rank keeps 1/K of everything, and gathers one block at a time, just
   before it runs, forward and again backward. We count the cycle: how many
   elements were all-gathered and reduce-scattered, against the formula.
3. Recomputation trades time for activations: ``full`` keeps only each
   block's input and runs the block again in backward; ``selective`` redoes
   the attention core only - which, with a fused kernel, saves almost
   nothing, since the kernel already dropped the s x s scores that
   selective recomputation was invented to avoid.
4. The interleaved pipeline: v chunks of layers per rank cut the bubble
   from (p-1)/(m+p-1) to (p-1)/(v m+p-1) of the step.
"""
import statistics

import torch
from mpi4py import MPI

from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.parallel.grid import Grid
from parallel_lm.parallel.schedules import bubble_formula, ideal_bubble
from parallel_lm.parallel.zero import memory_formula
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.training.trainer import Trainer
from parallel_lm.training.utilization import activation_formula

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
cfg = GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=64)
batches = Batches.from_bytes(load_corpus("synthetic"), cfg.block_size, seed=0)
n = GPT(cfg).num_params()
base = TrainConfig(model=cfg, global_batch_size=4 * K, data="synthetic", steps=3, warmup_steps=1)
MIB = 2**20


def trained(on, steps=3, **changes):
    """A Trainer of ``base`` with ``changes`` on communicator ``on``, after ``steps`` steps; and their records."""
    trainer = Trainer(TrainConfig(**{**base.to_dict(), "model": cfg, **changes}), on, batches)
    records = [trainer.train_step(s) for s in range(steps)]
    return trainer, records


print0(f"1. Where the bytes go: Ψ = {n:,} parameters, micro-batch {base.global_batch_size // K} x {cfg.block_size} "
       f"tokens, one process\n")
if rank == 0:
    alone, _ = trained(MPI.COMM_SELF, global_batch_size=4)
    have, want = alone.memory(), memory_formula(n, 0, 1)
    act = alone.pipeline.activation_bytes
    act_want = activation_formula(alone.cfg, Grid.for_world(1, 0), 4, True, True)
    for k in want:
        print(f"   {k:<11} {have[k] / MIB:7.3f} MiB   formula {want[k] / MIB:7.3f} MiB")
    print(f"   {'activations':<11} {act / MIB:7.3f} MiB   formula {act_want / MIB:7.3f} MiB  "
          f"({act / (have['params'] + have['grads'] + have['optimizer']):.1f}x the model state, for 4 sequences)")
    check(all(have[k] == want[k] for k in want), "parameters, gradients and AdamW's moments are 4 + 4 + 8 bytes each")
    check(abs(act / act_want - 1) < 0.02, "the activation formula counts what autograd keeps, to 2%")
comm.Barrier()

print0(f"\n2. ZeRO-3 on {K} ranks: every rank keeps 1/{K} of parameters, gradients and optimizer state\n")
z3, _ = trained(comm, steps=1, zero=3)
have, want = z3.memory(), memory_formula(n, 3, K)
for k in want:
    print0(f"   {k:<9} {have[k] / MIB:7.3f} MiB   formula (Ψ/{K} of each) {want[k] / MIB:7.3f} MiB")
blocks = sum(p.numel() for b in z3.stage.chunks[0].blocks for p in b.parameters())
root = n - blocks
per_block = blocks // cfg.n_layer
print0(f"   whole parameters at once: {have['live_layers'] / MIB:.3f} MiB (one block is {4 * per_block / MIB:.3f}, "
       f"the embeddings and final LayerNorm {4 * root / MIB:.3f})")
m = z3.n_micro
print0(f"   one step gathered {z3.sync.gathered:,} elements = {m} micro-batch(es) x 2 x the {blocks:,} block "
       f"parameters + the {root:,} others once;")
print0(f"   it reduce-scattered {z3.sync.scattered:,} = {m} x {blocks:,} + {root:,} (the last ones after the step)")
check(all(abs(have[k] / want[k] - 1) < 0.01 for k in want), "ZeRO-3 holds Ψ/K of each kind, as the formula says")
check(z3.sync.gathered == m * 2 * blocks + root, "each block is gathered before its forward and before its backward")
check(z3.sync.scattered == m * blocks + root, "and reduce-scattered once per micro-batch")
check(have["live_layers"] <= 4 * (2 * per_block + root), "no more than two blocks (running and prefetched) whole")
ratio = (z3.sync.gathered + z3.sync.scattered) / (2 * n)
print0(f"   traffic: {ratio:.2f}x a ring all-reduce of Ψ (1.5x when every parameter is a block's)")
z3.close()

print0("\n3. Recomputation: activation memory saved against time paid\n"
       f"   (part 1's batch, 4 sequences of {cfg.block_size} tokens; every rank trains its own copy at the same time,\n"
       "   the three modes in turn, step by step, so each meets the same machine)\n")
modes = ("none", "selective", "full")
runs = {mode: Trainer(TrainConfig(**{**base.to_dict(), "model": cfg, "global_batch_size": 4, "recompute": mode}),
                      MPI.COMM_SELF, batches) for mode in modes}
times = {mode: [] for mode in modes}
for s in range(6):
    for mode, t in runs.items():
        times[mode].append(t.train_step(s).step_s)
step_ms = {mode: 1e3 * statistics.mean(comm.allgather(statistics.median(times[mode][1:]))) for mode in modes}
for mode, t in runs.items():
    have = t.pipeline.activation_bytes
    want = activation_formula(t.cfg, Grid.for_world(1, 0), 4, True, True)
    print0(f"   {mode:<9} activations {have / MIB:7.3f} MiB (formula {want / MIB:7.3f})   step {step_ms[mode]:6.1f} ms")
    check(abs(have / want - 1) < 0.02, f"--recompute {mode}: the formula holds")
act = {mode: t.pipeline.activation_bytes for mode, t in runs.items()}
check(act["full"] < act["none"] / 3, "full recomputation keeps a fraction of the activations")
check(act["selective"] <= act["none"], "selective keeps a little less (one log-sum-exp per row)")
cost = step_ms["full"] / step_ms["none"]
print0(f"   full recomputation runs every block's forward again in backward: 4 units of arithmetic instead of 3\n"
       f"   (forward 1, backward 2, the forward again 1), 4/3 of a step; measured {cost:.2f}x here (the embeddings,\n"
       f"   the loss and the optimizer are not redone; timing noise on top). HFU counts that work, MFU does not.")
check(cost > 1.0, f"full recomputation costs time ({cost:.2f}x a step without it)")
print0("\n4. The interleaved bubble: idle fraction of a step, equal chunk costs, schedules run op by op\n")
print0(f"   {'p':>2} {'m':>3} {'v':>2} {'schedule':>9} {'formula':>8}")
for p in (2, 4):
    for v in (1, 2):
        idle = ideal_bubble("1f1b", 8, p, v)
        print0(f"   {p:>2} {8:>3} {v:>2} {idle:9.4f} {bubble_formula(p, 8, v):8.4f}")
        check(abs(idle - bubble_formula(p, 8, v)) < 1e-12, "the interleaved schedule has (p-1)/(v m+p-1) idle")
if K >= 2 and K % 2 == 0:
    pp = 2
    runs = {v: trained(comm, steps=4, pp=pp, virtual_stages=v, micro_batches=2, global_batch_size=4 * K)
            for v in (1, 2)}
    for v, (t, records) in runs.items():
        measured = statistics.median(r.bubble for r in records[1:])
        print0(f"   measured on {K} ranks (pp {pp}, m 2, v {v}): bubble {measured:.3f}, formula "
               f"{bubble_formula(pp, 2, v):.3f} (messages and this machine's noise on top)")
        t.close()
    print0("   The formula counts compute only. Here a chunk computes for well under a millisecond and interleaving\n"
           "   sends v times as many messages between stages, so it can lose; it pays when a chunk's compute\n"
           "   dwarfs a message (docs/benchmarks.md measures both regimes).")
print0("\nlesson 15 OK")

# Exercises
# 1. Predict part 1's activation count for --block-size 256 before you run it: which terms double,
#    and which grow four times?
# 2. With ZeRO-3 on 4 ranks, how many times is each block's weight gathered per step (forward,
#    backward, recomputation)? Check against part 2's counts with --recompute full.
# 3. Korthikanti et al.'s selective recomputation saves 5as/h of 34 + 5as/h per token and layer. For
#    GPT-3's shape (s 2048, h 12288, a 96), what fraction is that? Why does it save ~nothing here?
# Graded: python -m parallel_lm.exercises start 15.1, then check 15.1 (docs/course.md)
