"""Lesson 17: long sequences - cut the sequence itself over ranks (sequence and context parallelism).

    mpiexec -n 2 python lessons/17_sequence_and_context.py [--plot]

Activations grow with the sequence: at 128K tokens they, not the weights,
fill a GPU. Data parallelism cannot help (each rank still holds whole
sequences) and tensor parallelism leaves the LayerNorms and residuals
whole on every rank. The answer is to cut the sequence. Almost everything
in a transformer is per token, so a rank holding T/K of the tokens does
T/K of that work and keeps T/K of its activations. Attention is the one
exception: every token looks at every earlier one.

1. Why attention needs the whole sequence: per-token layers on a half of
   the sequence equal the full computation on that half; attention on a
   half does not.
2. The online softmax, step by step: the keys arrive in blocks, and a
   running maximum, sum and output per query give exactly the softmax
   over all of them, without ever holding all the scores.
3. Ring attention (context parallelism, parallel/context_parallel.py): the
   key/value blocks travel around the ranks, and each rank attends its
   queries to every block as it passes, forward and backward, against
   torch's causal attention. With a causal mask the rank holding the end
   of the sequence has the most work. Cutting 2K chunks and giving rank r
   chunks r and 2K-1-r evens it out: we count the work.
4. Training: --cp K equals one process, and its activations fall by K.
   Sequence parallelism (--sequence-parallel, with --tp) cuts the
   LayerNorm and residual activations that tensor parallelism left whole,
   as Korthikanti et al.'s formula says.
"""
import math

import torch
import torch.nn.functional as F
from mpi4py import MPI

from parallel_lm import figures
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.parallel.context_parallel import ContextParallel, balanced_positions
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.training.trainer import Trainer
from parallel_lm.training.utilization import activation_formula


def spans(positions) -> str:
    """Contiguous runs of sorted positions, e.g. '0-15 and 48-63'."""
    p = positions.tolist()
    starts = [i for i in range(len(p)) if i == 0 or p[i] != p[i - 1] + 1]
    return " and ".join(f"{p[a]}-{p[b - 1]}" for a, b in zip(starts, starts[1:] + [len(p)]))


start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
torch.manual_seed(0)

print0("1. Per token, or across tokens? One block of a GPT, a sequence of 16 tokens, split into halves\n")
model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
block = model.blocks[0]
x = torch.randn(1, 16, 32)
with torch.no_grad():
    full_mlp, full_attn = block.mlp(block.ln2(x)), block.attn(block.ln1(x))
    halves_mlp = torch.cat([block.mlp(block.ln2(x[:, :8])), block.mlp(block.ln2(x[:, 8:]))], dim=1)
    halves_attn = torch.cat([block.attn(block.ln1(x[:, :8])), block.attn(block.ln1(x[:, 8:]))], dim=1)
err_mlp, err_first, err_second = ((a - b).abs().max().item() for a, b in
                                  ((halves_mlp, full_mlp), (halves_attn[:, :8], full_attn[:, :8]),
                                   (halves_attn[:, 8:], full_attn[:, 8:])))
print0(f"   LayerNorm + MLP on each half:        max error {err_mlp:.1e}")
print0(f"   attention, first half on its own:    max error {err_first:.1e}  (its tokens see only earlier ones)")
print0(f"   attention, second half on its own:   max error {err_second:.1e}  (it never saw tokens 0-7)")
check(err_mlp < 1e-6 and err_first < 1e-6 and err_second > 1e-3, "only attention reaches across the cut")

print0("\n2. The online softmax: one query, 12 keys arriving in 3 blocks of 4\n")
q, keys, values = torch.randn(8), torch.randn(12, 8), torch.randn(12, 8)
scores = keys @ q / math.sqrt(8)
want = torch.softmax(scores, 0) @ values
high, total, out = -math.inf, 0.0, torch.zeros(8)
print0(f"   {'block':>5} {'block max':>10} {'running max':>12} {'rescale':>8} {'running sum':>12} {'|out - final|':>14}")
for b in range(3):
    s = scores[4 * b:4 * b + 4]
    new_high = max(high, float(s.max()))
    rescale = math.exp(high - new_high) if high > -math.inf else 0.0
    p = torch.exp(s - new_high)
    total = total * rescale + float(p.sum())
    out = out * rescale + p @ values[4 * b:4 * b + 4]
    high = new_high
    print0(f"   {b:>5} {float(s.max()):>10.3f} {high:>12.3f} {rescale:>8.3f} {total:>12.4f} "
           f"{(out / total - want).abs().max().item():>14.2e}")
check((out / total - want).abs().max().item() < 1e-6, "after the last block, the online softmax is the softmax")
print0("   A block with a larger maximum rescales what came before by exp(old max - new max); nothing is\n"
       "   recomputed, and no rank ever holds the T x T scores.")

T = 32 * K
print0(f"\n3. Ring attention on {K} ranks, T = {T} tokens cut into 2K = {2 * K} chunks of {T // (2 * K)}: each rank holds "
       f"2 chunks;\n   forward and backward against torch\n")
torch.manual_seed(1)
qf, kf, vf = (torch.randn(2, 2, T, 16, requires_grad=True) for _ in range(3))
grad = torch.randn(2, 2, T, 16)
F.scaled_dot_product_attention(qf, kf, vf, is_causal=True).backward(grad)
ref_out = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True).detach()
cp = ContextParallel(comm, T)
mine = cp.positions
ql, kl, vl = (t.detach()[:, :, mine].clone().requires_grad_() for t in (qf, kf, vf))
out = cp.attention(ql, kl, vl)
out.backward(grad[:, :, mine])
errors = [float((a - b[:, :, mine]).detach().abs().max()) for a, b in
          ((out, ref_out), (ql.grad, qf.grad), (kl.grad, kf.grad), (vl.grad, vf.grad))]
worst = comm.allreduce(max(errors), op=MPI.MAX)

print0(f"   rank 0 holds positions {spans(mine)} (chunks 0 and {2 * K - 1}); max error over ranks of output, "
       f"dQ, dK, dV: {worst:.1e}")
check(worst < 1e-5, "ring attention is exact, forward and backward")
print0("\n   Work under a causal mask (query-key pairs each rank computes), T = 64 tokens:")
works = {}
for name, positions in (("contiguous T/K", lambda r: torch.arange(r * 64 // K, (r + 1) * 64 // K)),
                        ("chunks r, 2K-1-r", lambda r: balanced_positions(64, K, r))):
    work = [int((positions(r)[:, None] >= torch.arange(64)[None, :]).sum()) for r in range(K)]
    print0(f"   {name:>18}: {work}   max/mean {max(work) / (sum(work) / K):.2f}")
    works[name] = (positions, work)
    if name.startswith("chunks"):
        check(len(set(work)) == 1, "balanced chunks give every rank the same work")
if figures.wanted() and rank == 0:
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    for ax, (name, (positions, work)) in zip(axes, works.items()):
        owner = np.full((64, 64), np.nan)
        for r in range(K):
            for q in positions(r).tolist():
                owner[q, :q + 1] = r  # the query-key pairs rank r computes under the causal mask
        ax.imshow(owner, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        ax.set_title(f"{name}: pairs per rank {work}", fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    for i, (name, (_, work)) in enumerate(works.items()):
        axes[2].bar(np.arange(K) + 0.4 * i, work, width=0.4, label=name)
    axes[2].set_xticks(np.arange(K) + 0.2, [f"rank {r}" for r in range(K)])
    axes[2].set_ylabel("query-key pairs computed")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"lesson 17: causal attention's work on {K} ranks, T = 64 (colour: the rank holding the query)")
    fig.tight_layout()
    print0(f"   drew {figures.save(fig, '17_causal_work')}")

print0("\n4. Training with the sequence cut: parameters after 3 steps against one process, activations per rank\n")
cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)
batches = Batches.from_bytes(load_corpus("synthetic"), cfg.block_size, seed=0)


def train(on, **layout):
    run = TrainConfig(model=cfg, global_batch_size=4, data="synthetic", steps=3, warmup_steps=1, **layout)
    trainer = Trainer(run, on, batches)
    for s in range(3):
        trainer.train_step(s)
    state, act = trainer.full_state_dict(), trainer.pipeline.activation_bytes
    want = activation_formula(run, run.grid(on.Get_size()), 4, True, True)
    trainer.close()
    return state, act, want


alone = comm.bcast(train(MPI.COMM_SELF) if rank == 0 else None, root=0)
print0(f"   {'layout':>28} {'max |param diff|':>17} {'activations MiB':>16} {'formula':>8}")
print0(f"   {'one process':>28} {'-':>17} {alone[1] / 2**20:>16.2f} {alone[2] / 2**20:>8.2f}")
layouts = {f"--cp {K}": dict(cp=K), f"--tp {K}": dict(tp=K), f"--tp {K} --sequence-parallel": dict(tp=K, sequence_parallel=True)}
seen = {}
for name, layout in layouts.items():
    state, act, want = train(comm, **layout)
    if rank == 0:
        diff = max(float((state[k] - alone[0][k]).abs().max()) for k in alone[0])
        print(f"   {name:>28} {diff:>17.1e} {act / 2**20:>16.2f} {want / 2**20:>8.2f}")
        check(diff < 2e-5, f"{name} trains as one process does")
        check(abs(act / want - 1) < 0.1, f"{name}: the activation formula holds to 10%")
    seen[name] = act
check(seen[f"--cp {K}"] < alone[1] / K * 1.1, "context parallelism keeps 1/K of the activations per rank")
check(seen[f"--tp {K} --sequence-parallel"] < seen[f"--tp {K}"], "sequence parallelism cuts what tp left whole")
print0("   --cp cuts every activation by K (the ring keeps Q, K, V, the output and one log-sum-exp per row,\n"
       "   about 6% more than the fused kernel the formula assumes). --tp alone leaves the LayerNorm and\n"
       "   residual activations whole on every rank; --sequence-parallel cuts those too, at the price of\n"
       "   an all-gather before and a reduce-scatter after each tensor-parallel region.")
print0("\nlesson 17 OK")

# Exercises
# 1. Part 2 with the blocks in the opposite order: does the result change? Which numbers in the table do?
# 2. Part 3 with contiguous chunks: how much longer does the busiest rank work than the average at K = 4?
#    (the formula is (2K - 1)/K)
# 3. Run with -n 4 and train with --cp 2 --tp 2 (python -m parallel_lm.train): which of the two cuts the
#    attention's activations, and which the MLP's?
# Graded: python -m parallel_lm.exercises start 17.1, then check 17.1 (docs/course.md)
