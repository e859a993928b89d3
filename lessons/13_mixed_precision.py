"""Lesson 13: mixed precision — bf16, fp16 with loss scaling, and fp16 gradient communication.

    mpiexec -n 2 python lessons/13_mixed_precision.py [--plot]

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

Part 1 shows the underflow with numbers, and then in this model's own
gradients: some of them are below float16's smallest value, and vanish
unless the loss is scaled. Part 2 trains the same model for the same steps
in fp32, bf16, fp16 and fp32 with fp16 communication on all ranks and
compares the loss curves; every run must stay finite and end within 0.1
nats of fp32. Part 3 watches the dynamic scaler work: started at 2^24 and
allowed to grow every 8 good steps, it overflows, skips steps and halves
until the gradients fit, then climbs until it overflows again: a sawtooth
just under the largest scale that fits. ``--plot`` draws it
(plots/lessons/13_loss_scale.png).

(On a CPU, 16-bit autocast saves no time; on a GPU it is where tensor
cores come from. The lesson is about the numerics.)
"""
import numpy as np
import torch
from mpi4py import MPI

from parallel_lm import figures
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import PRESETS
from parallel_lm.model.gpt import GPT
from parallel_lm.parallel.optim import LossScaler
from parallel_lm.runtime import check, start_script, print0, threads_per_rank
from parallel_lm.training.trainer import Trainer

start_script()
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

# ... and in this model: one fp16 backward of 16 sequences with the loss unscaled, and scaled by 2^16
STEPS = 60
model_cfg = PRESETS["tiny"]
batches = Batches.from_bytes(load_corpus("stdlib", 1 << 20), model_cfg.block_size, seed=0)
torch.manual_seed(0)
probe = GPT(model_cfg)
x, y = batches.rows(0, "train", 16, 0, 16)
zeros = {}
for scale in (1.0, 2.0 ** 16):
    probe.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):  # the matmuls, and so their gradients, in float16
        loss = probe(x, y)[1]
    (loss * scale).backward()  # the gradients stay multiplied by scale: we only count zeros
    g = torch.cat([p.grad.reshape(-1) for p in probe.parameters()])
    zeros[scale] = int((g == 0).sum())
print0(f"this model's gradients in one fp16 backward: {zeros[1.0]} of {g.numel()} underflow to 0 with the loss "
       f"unscaled, {zeros[2.0 ** 16]} with it scaled by 2^16")
check(zeros[1.0] > zeros[2.0 ** 16], "expected some of the model's gradients to underflow without scaling")

# Part 2: the same training in four numeric settings.
settings = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp16 + loss scaling": {"precision": "fp16"},
            "fp32, fp16 comm": {"comm_dtype": "fp16"}}
curves = {}
for name, overrides in settings.items():
    cfg = TrainConfig(model=model_cfg, global_batch_size=16 * K, steps=STEPS, **overrides)
    trainer = Trainer(cfg, comm, batches)
    recs = [trainer.train_step(s) for s in range(STEPS)]
    trainer.close()
    curves[name] = [r.loss for r in recs]
print0(f"\npart 2: {K} ranks, tiny preset, {STEPS} steps; training loss at steps:")
marks = [0, 9, 19, 39, STEPS - 1]
print0(f"{'setting':>20} " + "".join(f"{m + 1:>9}" for m in marks))
for name, curve in curves.items():
    print0(f"{name:>20} " + "".join(f"{curve[m]:>9.4f}" for m in marks))
for name, curve in curves.items():
    check(all(np.isfinite(curve)), f"{name}: loss became inf/nan")
    check(abs(curve[-1] - curves["fp32"][-1]) < 0.1, f"{name}: final loss {curve[-1]:.4f} is far from fp32's")
print0("All settings stay finite and end within 0.1 nats of fp32.")

# Part 3: the dynamic scaler at work. The trainer's scaler starts at 2^16 and grows every 1000 good
# steps, so a short run never sees it move; this one starts too high and grows every 8 good steps.
trainer = Trainer(TrainConfig(model=model_cfg, global_batch_size=16 * K, steps=STEPS, precision="fp16"), comm, batches)
trainer.scaler = LossScaler(scale=2.0 ** 24, growth_interval=8)
recs = [trainer.train_step(s) for s in range(STEPS)]
trainer.close()
scales, skipped = [r.loss_scale for r in recs], [bool(r.skipped) for r in recs]
print0("\npart 3: fp16 with the scale started at 2^24, growing x2 after 8 good steps; log2(scale) step by step "
       "(* = skipped on an overflow):")
print0("   " + " ".join(f"{int(np.log2(s))}{'*' if k else ''}" for s, k in zip(scales, skipped)))
first_good = skipped.index(False)
regrown = [i for i in range(first_good + 1, STEPS) if scales[i] > scales[i - 1]]
later_skips = [i for i in range(first_good, STEPS) if skipped[i]]
print0(f"   {first_good} steps skipped while 2^24 halved to 2^{int(np.log2(scales[first_good]))}; the scale grew "
       f"again {len(regrown)} times and overflowed {len(later_skips)} more time(s); final loss {recs[-1].loss:.4f} "
       f"(fp32 {curves['fp32'][-1]:.4f})")
check(first_good >= 1 and regrown and np.isfinite(recs[-1].loss), "expected overflows, skipped steps and regrowth")
check(abs(recs[-1].loss - curves["fp32"][-1]) < 0.1, "the skipped steps cost more than 0.1 nats")
if figures.wanted() and comm.Get_rank() == 0:
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.step(range(1, STEPS + 1), scales, where="post", color="tab:blue")
    top.scatter([i + 1 for i in range(STEPS) if skipped[i]], [scales[i] for i in range(STEPS) if skipped[i]],
                color="tab:red", zorder=3, label="skipped: a gradient overflowed")
    top.set_yscale("log", base=2)
    top.set_ylabel("loss scale")
    top.legend()
    top.set_title(f"lesson 13: dynamic loss scaling on {K} ranks, tiny preset")
    bottom.plot(range(1, STEPS + 1), [r.loss for r in recs], label="fp16, scale from 2^24")
    bottom.plot(range(1, STEPS + 1), curves["fp32"], label="fp32", linestyle="--")
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("step")
    bottom.legend()
    print0(f"   drew {figures.save(fig, '13_loss_scale')}")
print0("lesson 13 OK")

# Exercises
# 1. Set LossScaler's initial scale to 2**30 (parallel/optim.py). How many steps are skipped
#    before the scale settles? Where would you see that in metrics.jsonl?
# 2. Turn loss scaling off for fp16 (scale 1). Does this tiny model notice? Which of
#    part 1's gradient sizes do its gradients have (print a few)?
# 3. --comm-dtype fp16 rounds each rank's gradient before the sum. How does the error
#    grow with the number of ranks? Run with -n 2 and -n 8.
# Graded: python -m parallel_lm.exercises start 13.1, then check 13.1 (docs/course.md)
