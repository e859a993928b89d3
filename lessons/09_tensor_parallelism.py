"""Lesson 09: tensor parallelism — one layer's matrices split over ranks.

    mpiexec -n 2 python lessons/09_tensor_parallelism.py        (2 or 4 ranks: the heads must split evenly)

An MLP computes Y = GELU(X A) B. Megatron-LM (Shoeybi et al. 2019) splits
A by columns and B by rows over t ranks: rank r holds A_r (C x 4C/t) and
B_r (4C/t x C), computes GELU(X A_r) B_r on its own — GELU is
element-wise, so no communication is needed between the two matmuls — and
the t partial results are summed: Y = sum_r GELU(X A_r) B_r. One
all-reduce forward (the operator g) and, because X fed every rank's A_r,
one all-reduce of X's gradient backward (the operator f). Attention splits
the same way by heads.

1. We build one MLP, split it over the ranks (parallel/tensor_parallel.py),
   and check output and gradients against the unsplit layer, counting the
   messages f and g send.
2. We train a small GPT for 5 steps with every layer split (--tp K) and
   compare it with one process training the whole model.
"""
import torch
from mpi4py import MPI

from parallel_lm.comm.trace import CountingComm
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.model.gpt import MLP
from parallel_lm.parallel.tensor_parallel import ParallelMLP
from parallel_lm.parallel.tensor_parallel_comm import TensorParallel
from parallel_lm.parallel.tensor_parallel_sharding import join
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, t = comm.Get_rank(), comm.Get_size()
cfg = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16)
check(cfg.n_head % t == 0, f"run with a divisor of {cfg.n_head} ranks, e.g. mpiexec -n 2")

# 1. one MLP, split
torch.manual_seed(0)
full = MLP(cfg)
counting = CountingComm(comm)
part = ParallelMLP(full, TensorParallel(counting, "ring"))
print0(f"1. MLP C={cfg.n_embd} -> 4C={4 * cfg.n_embd} -> C; rank {rank} holds fc {tuple(part.fc.weight.shape)} "
       f"and proj {tuple(part.proj.weight.shape)} of {tuple(full.fc.weight.shape)} and {tuple(full.proj.weight.shape)}")
x = torch.randn(4, cfg.block_size, cfg.n_embd)
xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
ya, yb = full(xa), part(xb)
forward_msgs = counting.sent
(ya ** 2).sum().backward()
(yb ** 2).sum().backward()
backward_msgs = counting.sent - forward_msgs
out_err = float((ya - yb).detach().abs().max())
grad_err = float((xa.grad - xb.grad).abs().max())
fc_grad = join("mlp.fc.weight", comm.allgather(part.fc.weight.grad))
w_err = float((fc_grad - full.fc.weight.grad).abs().max())
print0(f"   output differs by {out_err:.1e}, input gradient by {grad_err:.1e}, fc weight gradient by {w_err:.1e}")
print0(f"   messages sent by rank 0: {forward_msgs} forward (g: one ring all-reduce = 2(t-1) = {2 * (t - 1)} "
       f"messages), {backward_msgs} backward (f)")
check(max(out_err, grad_err, w_err) < 1e-5, "the split MLP must compute what the whole one does")
check(forward_msgs == backward_msgs == 2 * (t - 1), "one all-reduce forward (g) and one backward (f)")

# 2. a whole model, every layer split
base = TrainConfig(model=cfg, global_batch_size=8, data="synthetic", steps=5, warmup_steps=2)
batches = Batches.from_bytes(load_corpus("synthetic"), cfg.block_size, base.seed)
reference = None
if rank == 0:
    alone = Trainer(base, MPI.COMM_SELF, batches)
    for s in range(5):
        alone.train_step(s)
    reference = alone.full_state_dict()
split = Trainer(TrainConfig(**{**base.to_dict(), "model": cfg, "tp": t}), comm, batches)
print0(f"2. training with --tp {t}: rank 0 holds {sum(p.numel() for p in split.params):,} of "
       f"{split.n_params:,} parameters")
comm.Barrier()  # the other ranks waited here while rank 0 trained the reference: not tensor-parallel time
for s in range(5):
    rec = split.train_step(s)
    print0(f"   step {s + 1}: loss {rec.loss:.6f}, time in f and g's all-reduces {rec.tp_comm_s * 1e3:.1f} ms "
           f"of {rec.step_s * 1e3:.1f} ms")
full_state = split.full_state_dict()
if rank == 0:
    diff = max(float((full_state[k] - reference[k]).abs().max()) for k in reference)
    print0(f"   after 5 steps the joined model differs from one process's by {diff:.1e}")
    check(diff < 2e-5, "tensor-parallel training must match single-process training")
comm.Barrier()
print0("lesson 09 OK")

# Exercises
# 1. Split the MLP the other way round (A by rows, B by columns). How many all-reduces
#    does it need now, and why does Megatron's choice avoid one?
# 2. Attention splits by heads. Why must n_head be divisible by t, and what would it take
#    to split 6 heads over 4 ranks?
# 3. Count the bytes: 4 all-reduces of B x T x C per layer per step. At what model width
#    does tensor parallelism stop paying on 10 GbE (python -m parallel_lm.predict --tp 2)?
# Graded: python -m parallel_lm.exercises start 09.1, then check 09.1 (docs/course.md)
