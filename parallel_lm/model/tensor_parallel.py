"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): each layer's matrices split over tp ranks.

Two operators carry all the communication, as autograd functions:
- ``f``: identity forward, all-reduce backward. It marks where a
  replicated activation enters a column-split layer: each rank's slice of
  the layer contributes part of the input's gradient, which must be summed.
- ``g``: all-reduce forward, identity backward. It sums the partial
  outputs of a row-split layer.
The all-reduce is any algorithm of the registry (``--allreduce``) on the
tensor-parallel communicator.

How the GPT is cut (rank r of t):
- attention: heads [r nh/t, (r+1) nh/t); qkv keeps those heads' rows of q,
  k and v (column-parallel), proj the matching input columns (row-parallel):
  f -> qkv -> attention on local heads -> proj -> g;
- MLP: fc keeps rows [r 4C/t, ...) (column), proj those columns (row):
  f -> fc -> GELU -> proj -> g;
- token embedding: vocabulary rows [r V/t, (r+1) V/t); a rank looks up the
  ids it owns (zeros elsewhere) and g sums the lookups;
- the head shares that weight: f -> x W_r^T gives this rank's slice of the
  logits, and the cross-entropy is computed across slices (``vocab_parallel_ce``:
  the max, the sum of exponentials and the target logit are all-reduced),
  so the full logits never exist on one rank;
- LayerNorms and the position embedding are replicated: every rank computes
  them on the same full activations, so their gradients agree without
  communication.

``shard_model(model, comm, algorithm)`` replaces a full ``GPT``'s layers in
place with these, slicing the full weights, so a model built from the same
seed is split exactly; ``gather_state_dict`` puts the pieces back together
with single-process keys.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

from ..comm import allreduce
from ..comm.buffers import as_array

SECONDS = [0.0]  # time spent in f and g's all-reduces, summed (the trainer reports it per step)


def _allreduce(t: torch.Tensor, comm, algorithm: str) -> torch.Tensor:
    t0 = time.perf_counter()
    out = t.detach().float().contiguous().clone()
    allreduce(as_array(out.view(-1)), comm, algorithm)
    SECONDS[0] += time.perf_counter() - t0
    return out.to(t.dtype)


class _F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm, algorithm):
        ctx.comm, ctx.algorithm = comm, algorithm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _allreduce(grad, ctx.comm, ctx.algorithm), None, None


class _G(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm, algorithm):
        return _allreduce(x, comm, algorithm)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def f(x, comm, algorithm):
    return _F.apply(x, comm, algorithm)


def g(x, comm, algorithm):
    return _G.apply(x, comm, algorithm)


def _part(n: int, comm) -> slice:
    size, rank = comm.Get_size(), comm.Get_rank()
    return slice(rank * n // size, (rank + 1) * n // size)


def _sharded(t: torch.Tensor) -> nn.Parameter:
    p = nn.Parameter(t.detach().clone())
    p.tp_sharded = True  # marks a slice of a larger weight: its gradient norm sums over tp ranks
    return p


class ParallelAttention(nn.Module):
    def __init__(self, full, n_head: int, comm, algorithm: str):
        super().__init__()
        self.comm, self.algorithm = comm, algorithm
        c = full.proj.weight.shape[0]
        rows = _part(c, comm)
        self.n_head = n_head // comm.Get_size()
        w, b = full.qkv.weight, full.qkv.bias
        self.qkv = nn.Linear(c, 3 * (rows.stop - rows.start))
        self.qkv.weight = _sharded(torch.cat([w[i * c:(i + 1) * c][rows] for i in range(3)]))
        self.qkv.bias = _sharded(torch.cat([b[i * c:(i + 1) * c][rows] for i in range(3)]))
        self.proj = nn.Linear(rows.stop - rows.start, c)
        self.proj.weight = _sharded(full.proj.weight[:, rows])
        self.proj.bias = nn.Parameter(full.proj.bias.detach().clone())

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(f(x, self.comm, self.algorithm)).chunk(3, dim=2)  # each (B, T, C/t)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        return g(F.linear(y, self.proj.weight), self.comm, self.algorithm) + self.proj.bias


class ParallelMLP(nn.Module):
    def __init__(self, full, comm, algorithm: str):
        super().__init__()
        self.comm, self.algorithm = comm, algorithm
        hidden, c = full.fc.weight.shape
        rows = _part(hidden, comm)
        self.fc = nn.Linear(c, rows.stop - rows.start)
        self.fc.weight, self.fc.bias = _sharded(full.fc.weight[rows]), _sharded(full.fc.bias[rows])
        self.proj = nn.Linear(rows.stop - rows.start, c)
        self.proj.weight = _sharded(full.proj.weight[:, rows])
        self.proj.bias = nn.Parameter(full.proj.bias.detach().clone())

    def forward(self, x):
        h = F.gelu(self.fc(f(x, self.comm, self.algorithm)))
        return g(F.linear(h, self.proj.weight), self.comm, self.algorithm) + self.proj.bias


class VocabParallelEmbedding(nn.Module):
    def __init__(self, full: nn.Embedding, comm, algorithm: str):
        super().__init__()
        self.comm, self.algorithm = comm, algorithm
        self.rows = _part(full.weight.shape[0], comm)
        self.weight = _sharded(full.weight[self.rows])

    def forward(self, idx):
        mine = (idx >= self.rows.start) & (idx < self.rows.stop)
        local = F.embedding((idx - self.rows.start) * mine, self.weight) * mine.unsqueeze(-1)
        return g(local, self.comm, self.algorithm)


class VocabParallelHead(nn.Module):
    """The head tied to the vocabulary-parallel embedding: this rank's slice of the logits."""

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        self.weight = embedding.weight
        self.comm, self.algorithm = embedding.comm, embedding.algorithm

    def forward(self, x):
        return F.linear(f(x, self.comm, self.algorithm), self.weight)


class _VocabParallelCE(torch.autograd.Function):
    """Cross-entropy over logits split by vocabulary: only (B, T) numbers cross ranks (Megatron)."""

    @staticmethod
    def forward(ctx, logits, targets, start, comm):
        logits = logits.float()
        peak = logits.max(dim=-1).values.contiguous()
        comm.Allreduce(MPI.IN_PLACE, peak.numpy(), op=MPI.MAX)
        shifted = logits - peak.unsqueeze(-1)
        exp = shifted.exp()
        total = exp.sum(dim=-1).contiguous()
        comm.Allreduce(MPI.IN_PLACE, total.numpy(), op=MPI.SUM)
        local = targets - start
        mine = (local >= 0) & (local < logits.shape[-1])
        picked = torch.where(mine, shifted.gather(-1, (local * mine).unsqueeze(-1)).squeeze(-1),
                             torch.zeros_like(total)).contiguous()
        comm.Allreduce(MPI.IN_PLACE, picked.numpy(), op=MPI.SUM)
        ctx.save_for_backward(exp / total.unsqueeze(-1), local, mine)
        return (total.log() - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        softmax, local, mine = ctx.saved_tensors
        g_logits = softmax.clone()
        g_logits.scatter_add_(-1, (local * mine).unsqueeze(-1), -mine.unsqueeze(-1).float())
        return g_logits * (grad / local.numel()), None, None, None


def vocab_parallel_ce(logits, targets, head: VocabParallelHead):
    """Mean cross-entropy of vocabulary-split logits (B, T, V/t) against full targets (B, T)."""
    start = head.weight.shape[0] * head.comm.Get_rank()
    return _VocabParallelCE.apply(logits, targets, start, head.comm)


def shard_model(model, comm, algorithm: str = "ring"):
    """Replace the full model's layers with tensor-parallel ones over ``comm`` (in place); returns it."""
    if comm.Get_size() == 1:
        return model
    for block in model.blocks:
        block.attn = ParallelAttention(block.attn, model.cfg.n_head, comm, algorithm)
        block.mlp = ParallelMLP(block.mlp, comm, algorithm)
    model.tok_emb = VocabParallelEmbedding(model.tok_emb, comm, algorithm)
    model.head = VocabParallelHead(model.tok_emb)
    model.tp_comm = comm
    return model


# how each sharded key's pieces join: the dimension, and for qkv the three sections
_JOIN = {"attn.qkv.weight": ("qkv", 0), "attn.qkv.bias": ("qkv", 0), "attn.proj.weight": ("cat", 1),
         "mlp.fc.weight": ("cat", 0), "mlp.fc.bias": ("cat", 0), "mlp.proj.weight": ("cat", 1),
         "tok_emb.weight": ("cat", 0), "head.weight": ("cat", 0)}


def join(key: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from the tp ranks' pieces of ``key`` (the same when not sharded)."""
    rule = next((r for suffix, r in _JOIN.items() if key.endswith(suffix)), None)
    if rule is None or len(pieces) == 1:
        return pieces[0]
    how, dim = rule
    if how == "qkv":
        thirds = [p.chunk(3, dim=0) for p in pieces]
        return torch.cat([torch.cat([t[i] for t in thirds], dim=0) for i in range(3)], dim=0)
    return torch.cat(pieces, dim=dim)


def gather_state_dict(state: dict, comm) -> dict | None:
    """Join every tp rank's state_dict into the full one on tp rank 0 (None on the others)."""
    parts = comm.gather({k: v.detach().clone() for k, v in state.items()}, root=0)
    if comm.Get_rank() != 0:
        return None
    return {k: join(k, [p[k] for p in parts]) for k in state}
