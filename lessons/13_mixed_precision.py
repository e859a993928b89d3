"""Lesson 13: mixed precision — bf16, fp16 with loss scaling, and fp16 gradient communication.

    mpiexec -n 2 python lessons/13_mixed_precision.py

Mixed precision runs the forward and backward matmuls in a 16-bit type
and keeps the master weights, the optimizer and the gradient buckets in
float32 (Micikevicius et al., "Mixed Precision Training", ICLR 2018):

- bfloat16 has float32's 8 exponent bits and 7 mantissa bits: same range,
  less precision. Nothing overflows; it just works (``--precision bf16``).
- float16 has 5 exponent bits and 10 mantissa bits: more precision, but it
  cannot hold anything above 65504 or below ~6e-8. Small gradients round
  to zero. The fix is *loss scaling*: multiply the loss by S (say 2^16)
  before backward, so gradients are S times larger and survive, then divide
  them by S before the optimizer step. *Dynamic* scaling halves S and skips
  the step when a gradient overflows to inf, and doubles it after a run of
  good steps (``parallel/optim.py``'s ``LossScaler``, ``--precision fp16``).
- separately, gradients can be *sent* as float16 (``--comm-dtype fp16``):
  half the bytes on the wire, at the cost of rounding each bucket to 10
  mantissa bits before the sum.

Part 1 shows the underflow with numbers. Part 2 trains the same model for
the same steps in fp32, bf16, fp16 and fp32 with fp16 communication on
all ranks and compares the loss curves. The lesson checks that every run
stays finite and ends within 0.1 nats of fp32.

(On a CPU, 16-bit autocast saves no time; on a GPU it is where tensor
cores come from. The lesson is about the numerics.)
"""
import numpy as np
import torch
from mpi4py import MPI

from parallel_lm.config import TrainConfig
from parallel_lm.data import Batches, load_corpus
from parallel_lm.model import PRESETS
from parallel_lm.runtime import check, install_abort_hook, print0, threads_per_rank
from parallel_lm.trainer import Trainer

install_abort_hook()
comm = MPI.COMM_WORLD
K = comm.Get_size()
torch.set_num_threads(threads_per_rank(comm))

# Part 1: what float16 does to small gradients, and what scaling by 2^16 buys.
grads = np.array([1e-3, 1e-5, 1e-7, 1e-9], dtype=np.float32)
as_fp16 = grads.astype(np.float16).astype(np.float32)
scaled = (grads * 2**16).astype(np.float16).astype(np.float32) / 2**16
print0("part 1: gradient values stored in float16")
print0(f"{'float32':>12} {'as float16':>12} {'scaled x2^16':>13}")
for g, h, s in zip(grads, as_fp16, scaled):
    print0(f"{g:>12.1e} {h:>12.2e} {s:>13.2e}")
check(as_fp16[3] == 0 and scaled[3] != 0, "expected 1e-9 to vanish in fp16 and survive with scaling")
print0(f"float16 largest value {np.finfo(np.float16).max:.0f}; smallest subnormal {np.finfo(np.float16).smallest_subnormal:.1e}\n")

# Part 2: the same training in four numeric settings.
STEPS = 60
model_cfg = PRESETS["tiny"]
batches = Batches.from_bytes(load_corpus("stdlib", 1 << 20), model_cfg.block_size, seed=0)
settings = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp16 + loss scaling": {"precision": "fp16"},
            "fp32, fp16 comm": {"comm_dtype": "fp16"}}
curves, scales = {}, []
for name, overrides in settings.items():
    cfg = TrainConfig(model=model_cfg, global_batch_size=16 * K, steps=STEPS, **overrides)
    trainer = Trainer(cfg, comm, batches)
    recs = [trainer.train_step(s) for s in range(STEPS)]
    trainer.close()
    curves[name] = [r.loss for r in recs]
    if trainer.scaler:
        scales = [r.loss_scale for r in recs]
        skipped = sum(r.skipped for r in recs)
print0(f"part 2: {K} ranks, tiny preset, {STEPS} steps; training loss at steps:")
marks = [0, 9, 19, 39, STEPS - 1]
print0(f"{'setting':>20} " + "".join(f"{m + 1:>9}" for m in marks))
for name, curve in curves.items():
    print0(f"{name:>20} " + "".join(f"{curve[m]:>9.4f}" for m in marks))
print0(f"\nfp16 loss scale went {scales[0]:.0f} -> {scales[-1]:.0f}, {skipped} step(s) skipped for overflow")
for name, curve in curves.items():
    check(all(np.isfinite(curve)), f"{name}: loss became inf/nan")
    check(abs(curve[-1] - curves["fp32"][-1]) < 0.1, f"{name}: final loss {curve[-1]:.4f} is far from fp32's")
print0("All settings stay finite and end within 0.1 nats of fp32.")
print0("lesson 13 OK")

# Exercises
# 1. Set LossScaler's initial scale to 2**30 (parallel/optim.py). How many steps are skipped
#    before the scale settles? Where would you see that in metrics.jsonl?
# 2. Turn loss scaling off for fp16 (scale 1). Does this tiny model notice? Which of
#    part 1's gradient sizes do its gradients have (print a few)?
# 3. --comm-dtype fp16 rounds each rank's gradient before the sum. How does the error
#    grow with the number of ranks? Run with -n 2 and -n 8.
