"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): each layer's matrices split over tp ranks.

Two operators carry all the communication, as autograd functions over a
``TensorParallel`` group (its communicator, the --allreduce algorithm, and
the seconds its all-reduces took, which the trainer reports per step):
- ``identity_forward_allreduce_backward`` (Megatron's ``f``): marks where a
  replicated activation enters a column-split layer. Forward passes it on;
  each rank's slice of the layer contributes part of the input's gradient,
  so backward sums those over the group.
- ``allreduce_forward_identity_backward`` (Megatron's ``g``): sums the
  partial outputs of a row-split layer; the gradient of a sum reaches every
  part unchanged.

How the GPT is cut (rank r of t):
- attention: heads [r nh/t, (r+1) nh/t); qkv keeps those heads' rows of q,
  k and v (column-parallel), proj the matching input columns (row-parallel):
  f -> qkv -> attention on local heads -> proj -> g (f, g as above);
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

``shard_model(model, tp)`` replaces a full ``GPT``'s layers in place with
these, slicing the full weights, so a model built from the same seed is
split exactly. ``piece(key, full, rank, size)`` cuts any full tensor of a
parameter (its value or its optimizer moments) the same way, and
``join(key, pieces)`` puts the pieces back together, so checkpoints keep
single-process keys and shapes whatever the layout.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

from ..comm import allreduce
from ..comm.buffers import as_array
from ..model.gpt import attention_core


class TensorParallel:
    """A tensor-parallel group: ``comm``, the all-reduce ``algorithm``, and ``seconds`` spent all-reducing."""

    def __init__(self, comm, algorithm: str = "ring"):
        self.comm, self.algorithm = comm, algorithm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.seconds = 0.0

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the group (fp32 on the wire), as a new tensor of t's dtype."""
        t0 = time.perf_counter()
        out = t.detach().float().contiguous().clone()
        allreduce(as_array(out.view(-1)), self.comm, self.algorithm)
        self.seconds += time.perf_counter() - t0
        return out.to(t.dtype)

    def host_allreduce(self, t: torch.Tensor, op) -> torch.Tensor:
        """``t`` reduced in place with MPI ``op`` (the library's, for MAX) through host memory."""
        host = t.cpu()
        self.comm.Allreduce(MPI.IN_PLACE, host.numpy(), op=op)
        return host.to(t.device)


class _IdentityForwardAllreduceBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.tp.allreduce(grad), None


class _AllreduceForwardIdentityBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        return tp.allreduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def identity_forward_allreduce_backward(x, tp: TensorParallel):
    """Megatron's f: x unchanged forward; its gradient summed over the group backward."""
    return _IdentityForwardAllreduceBackward.apply(x, tp)


def allreduce_forward_identity_backward(x, tp: TensorParallel):
    """Megatron's g: partial results summed over the group forward; the gradient passed through backward."""
    return _AllreduceForwardIdentityBackward.apply(x, tp)


def _part(n: int, rank: int, size: int) -> slice:
    return slice(rank * n // size, (rank + 1) * n // size)


# how each sharded key is cut and joined: along which dimension, and for qkv in three sections (q, k, v)
_CUTS = {"attn.qkv.weight": ("qkv", 0), "attn.qkv.bias": ("qkv", 0), "attn.proj.weight": ("cat", 1),
         "mlp.fc.weight": ("cat", 0), "mlp.fc.bias": ("cat", 0), "mlp.proj.weight": ("cat", 1),
         "tok_emb.weight": ("cat", 0), "head.weight": ("cat", 0)}


def _cut(key: str):
    return next((rule for suffix, rule in _CUTS.items() if key.endswith(suffix)), None)


def is_sharded(key: str) -> bool:
    """Whether the parameter named ``key`` (single-process name) is split over tensor-parallel ranks."""
    return _cut(key) is not None


def piece(key: str, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s piece of the full tensor ``full`` of parameter ``key`` (itself if not sharded)."""
    rule = _cut(key)
    if rule is None or size == 1 or full.dim() == 0:
        return full
    how, dim = rule
    if how == "qkv":
        return torch.cat([third[_part(third.shape[0], rank, size)] for third in full.chunk(3, dim=0)])
    return full.narrow(dim, rank * full.shape[dim] // size, full.shape[dim] // size)


def join(key: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from the tp ranks' pieces of ``key`` (the first piece when not sharded)."""
    rule = _cut(key)
    if rule is None or len(pieces) == 1 or pieces[0].dim() == 0:
        return pieces[0]
    how, dim = rule
    if how == "qkv":
        thirds = [p.chunk(3, dim=0) for p in pieces]
        return torch.cat([torch.cat([t[i] for t in thirds], dim=0) for i in range(3)], dim=0)
    return torch.cat(pieces, dim=dim)


def _param(full: nn.Parameter, key: str, tp: TensorParallel) -> nn.Parameter:
    return nn.Parameter(piece(key, full.detach(), tp.rank, tp.size).clone())


class ParallelAttention(nn.Module):
    recompute_core = False  # --recompute selective

    def __init__(self, full, n_head: int, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        c = full.proj.weight.shape[0]
        self.n_head = n_head // tp.size
        width = c // tp.size
        self.qkv = nn.Linear(c, 3 * width)
        self.qkv.weight = _param(full.qkv.weight, "attn.qkv.weight", tp)
        self.qkv.bias = _param(full.qkv.bias, "attn.qkv.bias", tp)
        self.proj = nn.Linear(width, c)
        self.proj.weight = _param(full.proj.weight, "attn.proj.weight", tp)
        self.proj.bias = nn.Parameter(full.proj.bias.detach().clone())

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(identity_forward_allreduce_backward(x, self.tp)).chunk(3, dim=2)  # each (B, T, C/t)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = attention_core(q, k, v, self.recompute_core).transpose(1, 2).reshape(B, T, -1)
        return allreduce_forward_identity_backward(F.linear(y, self.proj.weight), self.tp) + self.proj.bias


class ParallelMLP(nn.Module):
    def __init__(self, full, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        hidden, c = full.fc.weight.shape
        self.fc = nn.Linear(c, hidden // tp.size)
        self.fc.weight = _param(full.fc.weight, "mlp.fc.weight", tp)
        self.fc.bias = _param(full.fc.bias, "mlp.fc.bias", tp)
        self.proj = nn.Linear(hidden // tp.size, c)
        self.proj.weight = _param(full.proj.weight, "mlp.proj.weight", tp)
        self.proj.bias = nn.Parameter(full.proj.bias.detach().clone())

    def forward(self, x):
        h = F.gelu(self.fc(identity_forward_allreduce_backward(x, self.tp)))
        return allreduce_forward_identity_backward(F.linear(h, self.proj.weight), self.tp) + self.proj.bias


class VocabParallelEmbedding(nn.Module):
    def __init__(self, full: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.rows = _part(full.weight.shape[0], tp.rank, tp.size)
        self.weight = _param(full.weight, "tok_emb.weight", tp)

    def forward(self, idx):
        mine = (idx >= self.rows.start) & (idx < self.rows.stop)
        local = F.embedding((idx - self.rows.start) * mine, self.weight) * mine.unsqueeze(-1)
        return allreduce_forward_identity_backward(local, self.tp)


class VocabParallelHead(nn.Module):
    """The head tied to the vocabulary-parallel embedding: this rank's slice of the logits."""

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        self.weight, self.tp, self.start = embedding.weight, embedding.tp, embedding.rows.start

    def forward(self, x):
        return F.linear(identity_forward_allreduce_backward(x, self.tp), self.weight)


class _VocabParallelCE(torch.autograd.Function):
    """Cross-entropy over logits split by vocabulary: only (B, T) numbers cross ranks (Megatron)."""

    @staticmethod
    def forward(ctx, logits, targets, start, tp):
        logits = logits.float()
        peak = tp.host_allreduce(logits.max(dim=-1).values.contiguous(), MPI.MAX)
        shifted = logits - peak.unsqueeze(-1)
        exp = shifted.exp()
        total = tp.host_allreduce(exp.sum(dim=-1).contiguous(), MPI.SUM)
        local = targets - start
        mine = (local >= 0) & (local < logits.shape[-1])
        picked = torch.where(mine, shifted.gather(-1, (local * mine).unsqueeze(-1)).squeeze(-1),
                             torch.zeros_like(total)).contiguous()
        picked = tp.host_allreduce(picked, MPI.SUM)
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
    return _VocabParallelCE.apply(logits, targets, head.start, head.tp)


def shard_model(model, tp: TensorParallel):
    """Replace the full model's layers with tensor-parallel ones over ``tp`` (in place); returns it.

    Parameter names stay the single-process ones, each holding this rank's
    ``piece`` of the full tensor.
    """
    if tp.size == 1:
        return model
    for block in model.blocks:
        block.attn = ParallelAttention(block.attn, model.cfg.n_head, tp)
        block.mlp = ParallelMLP(block.mlp, tp)
    model.tok_emb = VocabParallelEmbedding(model.tok_emb, tp)
    model.head = VocabParallelHead(model.tok_emb)
    return model
