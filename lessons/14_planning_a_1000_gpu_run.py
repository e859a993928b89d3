"""Lesson 14: plan a 1,000-GPU run, then check the plan against the published one.

    python lessons/14_planning_a_1000_gpu_run.py      (one process; under mpiexec -n K rank 0 runs it alone)

The task: train a 145.6B-parameter GPT (80 layers, hidden 12,288, 96
heads, 2,048 tokens, vocabulary 51,200) with a batch of 2,304 sequences on
1,536 A100 80 GB GPUs in DGX A100 nodes (8 GPUs on NVLink, 8 InfiniBand
HDR rails per node). Megatron-LM's authors ran exactly this (Narayanan et
al. 2021, Table 1: tp 8, pp 8, 2 virtual stages, micro-batch 2, full
recomputation) and measured 148 TFLOP/s per GPU.

The predictor (``costmodel/step.py``, the same model as
``python -m parallel_lm.predict``) answers the planner's questions
without a GPU:
1. does it fit? the state alone is 18 bytes per parameter in mixed
   precision: 2.6 TB for this model, so it must be split;
2. which layouts fit in 80 GiB, and how long is a step in each;
3. which term dominates the one we pick, and what changes it.
Then we compare our pick with the published run.
"""
from itertools import product

from parallel_lm.costmodel.devices import DEVICES, GIB
from parallel_lm.costmodel.layout import Cluster, Layout
from parallel_lm.costmodel.step import predict_run
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.costmodel.transformer import ModelShape
from parallel_lm.runtime import check, rank

if rank() > 0:  # planning needs no cluster: other MPI ranks have nothing to do
    raise SystemExit(0)

model = ModelShape(n_layer=80, n_embd=12288, n_head=96, seq_len=2048, vocab_size=51200)
cluster = Cluster.from_profile(DEVICES["a100-80gb"], load_profile("dgx-a100-hdr"))
GPUS, BATCH = 1536, 2304

# 1. the state alone
state = 18 * model.params()
print(f"1. {model.params() / 1e9:.1f}B parameters x 18 bytes (fp16 weights, fp32 gradients, fp32 master + Adam) "
      f"= {state / 1e12:.2f} TB of state: at least {state / (80 * GIB):.0f} GPUs' memory before any activation")
check(state > 80 * GIB, "a model this size cannot fit one GPU")

# 2. search layouts: tp inside a node (1-8), pipeline stages dividing the layers, data parallel for the rest
print("\n2. every layout of 1,536 GPUs with tp <= 8, micro-batch 1 or 2, full or selective recomputation:")
results = []
for tp, pp, mb, recompute in product((1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2), ("full", "selective")):
    if GPUS % (tp * pp):
        continue
    lay = Layout(BATCH, mb, dp=GPUS // (tp * pp), tp=tp, pp=pp, recompute=recompute,
                 sequence_parallel=recompute == "selective" and tp > 1, precision="fp16", dp_overlap=False)
    if lay.problems(model, GPUS):
        continue
    results.append((predict_run(model, lay, cluster), lay))
fitting = sorted((r for r in results if r[0].fits), key=lambda r: r[0].step_s)
print(f"   {len(results)} layouts are valid; {len(fitting)} fit in 80 GiB. The five fastest:")
print(f"   {'tp':>3} {'pp':>3} {'dp':>4} {'mb':>3} {'recompute':>10} {'step_s':>7} {'TFLOP/s':>8} {'GiB':>6}")
for pred, lay in fitting[:5]:
    print(f"   {lay.tp:>3} {lay.pp:>3} {lay.dp:>4} {lay.micro_batch:>3} {lay.recompute:>10} {pred.step_s:>7.2f} "
          f"{pred.tflops_per_gpu:>8.1f} {pred.memory_gib_per_gpu:>6.1f}")
too_big = [r for r in results if not r[0].fits]
check(len(too_big) > 0 and len(fitting) > 0, "some layouts should fit and some should not")
smallest_split = min(too_big, key=lambda r: r[1].tp * r[1].pp)
print(f"   e.g. tp {smallest_split[1].tp} x pp {smallest_split[1].pp} needs "
      f"{smallest_split[0].memory_gib_per_gpu:.0f} GiB per GPU: it does not fit")

# 3. the published layout, term by term
published = Layout(BATCH, 2, dp=24, tp=8, pp=8, virtual_stages=2, recompute="full", precision="fp16", dp_overlap=False)
pred = predict_run(model, published, cluster)
print("\n3. the published layout (tp 8, pp 8, dp 24, 2 virtual stages, micro-batch 2, full recompute):")
print(f"   step {pred.step_s:.2f} s, {pred.tflops_per_gpu:.1f} TFLOP/s per GPU predicted; published 148 "
      f"({(pred.tflops_per_gpu / 148 - 1) * 100:+.1f}%); MFU {pred.mfu:.3f}; {pred.memory_gib_per_gpu:.1f} GiB per GPU")
for term, seconds in sorted(pred.terms_s.items(), key=lambda kv: -kv[1]):
    print(f"   {term:>24} {seconds:8.3f} s  {seconds / pred.step_s:6.1%}")
check(abs(pred.tflops_per_gpu / 148 - 1) < 0.10, "the published run should be predicted within 10%")
biggest = max(pred.terms_s, key=pred.terms_s.get)
check(biggest == "compute_s", "compute should dominate a well-chosen layout")
no_interleave = predict_run(model, Layout(BATCH, 2, dp=24, tp=8, pp=8, recompute="full", precision="fp16",
                                          dp_overlap=False), cluster)
print(f"   without interleaving the bubble grows from {pred.terms_s['bubble_s']:.2f} s to "
      f"{no_interleave.terms_s['bubble_s']:.2f} s (it is (p-1)/(v m) of the compute)")
check(no_interleave.terms_s["bubble_s"] > 1.8 * pred.terms_s["bubble_s"], "two virtual stages should halve the bubble")
print("\nlesson 14 OK")

# Exercises
# 1. Selective recomputation with sequence parallelism saves the recomputed forward. Predict the
#    published layout with it: how much faster is the step, and does it still fit?
# 2. Move the same model to h100-sxm on dgx-h100-ndr. Which term grows as a share of the step, and why?
# 3. Halve the global batch. What happens to the bubble, and what layout change wins it back?
# Graded: python -m parallel_lm.exercises start 14.1, then check 14.1 (docs/course.md)
