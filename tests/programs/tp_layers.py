"""Run under mpiexec -n K: each tensor-parallel layer against the plain layer, forward and backward.

Every rank builds the same full layers from one seed, shards them over
COMM_WORLD, runs the same input through both, and compares outputs, input
gradients and its slice of the weight gradients. Reports one case per comparison (report.py), named as
in CHECKS, with its largest relative error over the ranks; a case passes within 1e-5.
"""
import torch
import torch.nn.functional as F
from mpi4py import MPI
from report import case

from parallel_lm.model import GPTConfig
from parallel_lm.model.gpt import MLP, CausalSelfAttention
from parallel_lm.model.llama import GatedMLP, Rotary
from parallel_lm.parallel.tensor_parallel import (
    ParallelAttention,
    ParallelGatedMLP,
    ParallelMLP,
    VocabParallelEmbedding,
    VocabParallelHead,
    vocab_parallel_ce,
)
from parallel_lm.parallel.tensor_parallel_comm import TensorParallel
from parallel_lm.parallel.tensor_parallel_sharding import join
from parallel_lm.runtime import start_script

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
tp = TensorParallel(comm, "ring")
TOL = 1e-5
cfg = GPTConfig(n_layer=1, n_head=4, n_embd=32, block_size=8)
llama = GPTConfig(n_layer=1, n_head=8, n_embd=32, block_size=8, arch="llama", n_kv_head=4)  # grouped-query


def check(name, got, want):
    got, want = got.detach(), want.detach()
    err = comm.allreduce(float((got - want).abs().max() / (want.abs().max() + 1e-12)), op=MPI.MAX)
    if comm.Get_rank() == 0:
        case(name, err <= TOL, f"{name} on {comm.Get_size()} ranks: relative error {err:.1e}", error=err)


def gathered(key, piece):
    return join(key, comm.allgather(piece.detach()))


torch.manual_seed(0)
x = torch.randn(2, cfg.block_size, cfg.n_embd)
for name, make, parallel, keys in (
        ("attention", CausalSelfAttention, lambda m: ParallelAttention(m, tp),
         ["attn.qkv.weight", "attn.proj.weight"]),
        ("mlp", MLP, lambda m: ParallelMLP(m, tp), ["mlp.fc.weight", "mlp.proj.weight"]),
        ("llama attention", lambda c: CausalSelfAttention(llama, rotary=Rotary(llama.n_embd // llama.n_head)),
         lambda m: ParallelAttention(m, tp), ["attn.q.weight", "attn.kv.weight", "attn.proj.weight"]),
        ("llama gated mlp", lambda c: GatedMLP(llama), lambda m: ParallelGatedMLP(m, tp),
         ["mlp.gate_up.weight", "mlp.proj.weight"])):
    torch.manual_seed(1)
    full = make(cfg)
    part = parallel(full)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = full(xa), part(xb)
    check(f"{name} forward", yb, ya)
    (ya ** 2).sum().backward()
    (yb ** 2).sum().backward()
    check(f"{name} input grad", xb.grad, xa.grad)
    for key in keys:
        leaf = key.split(".", 1)[1]
        mod_full = full.get_submodule(leaf.rsplit(".", 1)[0])
        mod_part = part.get_submodule(leaf.rsplit(".", 1)[0])
        check(f"{name} {leaf} grad", gathered(key, mod_part.weight.grad), mod_full.weight.grad)

torch.manual_seed(2)
emb = torch.nn.Embedding(cfg.vocab_size, cfg.n_embd)
idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
targets = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
pemb = VocabParallelEmbedding(emb, tp)
head = VocabParallelHead(pemb.weight, tp, pemb.rows.start)
h_full = emb(idx)
loss_full = F.cross_entropy((h_full @ emb.weight.t()).view(-1, cfg.vocab_size), targets.view(-1))
h_part = pemb(idx)
loss_part = vocab_parallel_ce(head(h_part), targets, head)
check("embedding forward", h_part, h_full)
check("vocab-parallel cross-entropy", loss_part.detach(), loss_full.detach())
loss_full.backward()
loss_part.backward()
check("tied embedding + head grad", gathered("tok_emb.weight", pemb.weight.grad), emb.weight.grad)
