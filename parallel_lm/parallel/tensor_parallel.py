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

Sequence parallelism (``--sequence-parallel``; Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", section
4.2.2): between the tensor-parallel regions the activations (B, T, C) are
cut along the sequence, rank r holding tokens [r T/t, (r+1) T/t), so the
LayerNorms, residual adds and biases run on T/t tokens and store T/t of
their activations. Before a column-split layer an all-gather along the
sequence rebuilds the full input (backward: a reduce-scatter of its
gradient); after a row-split layer a reduce-scatter sums the partial
outputs and leaves each rank its tokens (backward: an all-gather). An
all-reduce is a reduce-scatter plus an all-gather, so the bytes moved are
the same as without it, except that a column-split layer keeps only its
rank's tokens for backward and gathers them again there (Megatron-LM's
choice: one more all-gather per layer, T/t of the memory). The embedding's lookups are reduce-scattered the
same way, and the head all-gathers its input. A replicated parameter used
on the local tokens only (LayerNorm, the row-split layers' biases, the
position embedding) sees a part of the batch, so its gradient is summed
over the group in backward (``f`` applied to the parameter).

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

from ..comm import ALL_GATHER_ALGORITHMS, REDUCE_SCATTER_ALGORITHMS, all_gather, allreduce, reduce_scatter
from ..comm.buffers import as_array
from ..model.gpt import attention_core


class TensorParallel:
    """A tensor-parallel group: ``comm``, the all-reduce ``algorithm``, and ``seconds`` spent communicating.
    ``sequence_parallel``: activations between the tensor-parallel regions are cut along the sequence."""

    def __init__(self, comm, algorithm: str = "ring", sequence_parallel: bool = False):
        self.comm, self.algorithm = comm, algorithm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.sequence_parallel = sequence_parallel and self.size > 1
        self.seconds = 0.0

    def _sequence_major(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> a flat fp32 copy in (T, B, C) order, where rank r's tokens are one contiguous chunk."""
        return t.detach().float().transpose(0, 1).contiguous().view(-1)

    def gather_sequence(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T/t, C) on each rank -> (B, T, C): the ranks' token ranges put together (all-gather)."""
        t0 = time.perf_counter()
        B, local, C = t.shape
        full = torch.empty(local * self.size * B * C)
        full.view(self.size, -1)[self.rank] = self._sequence_major(t)
        algorithm = self.algorithm if self.algorithm in ALL_GATHER_ALGORITHMS else "ring"
        all_gather(as_array(full), self.comm, algorithm)
        self.seconds += time.perf_counter() - t0
        return full.view(local * self.size, B, C).transpose(0, 1).to(t.dtype)

    def scatter_sequence(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) partial sums on each rank -> (B, T/t, C): this rank's tokens, summed over ranks."""
        t0 = time.perf_counter()
        B, T, C = t.shape
        flat = self._sequence_major(t).clone()
        algorithm = self.algorithm if self.algorithm in REDUCE_SCATTER_ALGORITHMS else "ring"
        mine = torch.from_numpy(reduce_scatter(as_array(flat), self.comm, algorithm).copy())
        self.seconds += time.perf_counter() - t0
        return mine.view(T // self.size, B, C).transpose(0, 1).to(t.dtype)

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


class _ScatterForwardGatherBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return tp.scatter_sequence(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.tp.gather_sequence(grad), None


class _GatheredLinear(torch.autograd.Function):
    """x W^T + b over the all-gathered tokens, keeping only this rank's tokens for backward (gathered again
    there), as Megatron-LM does: the full input would cost the memory sequence parallelism saves."""

    @staticmethod
    def forward(ctx, x, weight, bias, tp):
        ctx.tp, ctx.has_bias = tp, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(tp.gather_sequence(x), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        full = ctx.tp.gather_sequence(x)
        grad_w = grad.reshape(-1, grad.shape[-1]).t().matmul(full.reshape(-1, full.shape[-1]).to(grad.dtype))
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        grad_x = ctx.tp.scatter_sequence(grad.matmul(weight.to(grad.dtype)))
        return grad_x, grad_w.to(weight.dtype), grad_b, None


def column_linear(x, weight, bias, tp: TensorParallel):
    """A column-split layer on the replicated input: f then x W_r^T + b_r; under sequence parallelism
    the tokens are all-gathered first (and again in backward, ``_GatheredLinear``)."""
    if tp.sequence_parallel:
        return _GatheredLinear.apply(x, weight, bias, tp)
    return F.linear(identity_forward_allreduce_backward(x, tp), weight, bias)


def leave(x, tp: TensorParallel):
    """Out of a row-split layer: g, or under sequence parallelism the reduce-scatter to each rank's tokens."""
    return _ScatterForwardGatherBackward.apply(x, tp) if tp.sequence_parallel else \
        allreduce_forward_identity_backward(x, tp)


def local_tokens(param, tp: TensorParallel):
    """A replicated parameter as used on this rank's tokens: under sequence parallelism its gradient is
    summed over the group in backward (each rank saw a part of the tokens); otherwise the parameter."""
    return identity_forward_allreduce_backward(param, tp) if tp.sequence_parallel else param


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
    context = None  # --cp

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
        q, k, v = column_linear(x, self.qkv.weight, self.qkv.bias, self.tp).chunk(3, dim=2)  # each (B, T, C/t)
        T = q.shape[1]  # the whole sequence, also when the input held this rank's tokens only
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = attention_core(q, k, v, self.recompute_core, self.context).transpose(1, 2).reshape(B, T, -1)
        return leave(F.linear(y, self.proj.weight), self.tp) + local_tokens(self.proj.bias, self.tp)


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
        h = F.gelu(column_linear(x, self.fc.weight, self.fc.bias, self.tp))
        return leave(F.linear(h, self.proj.weight), self.tp) + local_tokens(self.proj.bias, self.tp)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, full: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.rows = _part(full.weight.shape[0], tp.rank, tp.size)
        self.weight = _param(full.weight, "tok_emb.weight", tp)

    def forward(self, idx):
        mine = (idx >= self.rows.start) & (idx < self.rows.stop)
        local = F.embedding((idx - self.rows.start) * mine, self.weight) * mine.unsqueeze(-1)
        return leave(local, self.tp)


class VocabParallelHead(nn.Module):
    """The head tied to the vocabulary-parallel embedding: this rank's slice of the logits."""

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        self.weight, self.tp, self.start = embedding.weight, embedding.tp, embedding.rows.start

    def forward(self, x):
        return column_linear(x, self.weight, None, self.tp)


class SequenceParallelNorm(nn.Module):
    """A replicated LayerNorm on this rank's tokens (sequence parallelism): its gradients summed over the group."""

    def __init__(self, full: nn.LayerNorm, tp: TensorParallel):
        super().__init__()
        self.tp, self.shape, self.eps = tp, full.normalized_shape, full.eps
        self.weight, self.bias = full.weight, full.bias

    def forward(self, x):
        return F.layer_norm(x, self.shape, local_tokens(self.weight, self.tp), local_tokens(self.bias, self.tp), self.eps)


class SequenceParallelPositions(nn.Module):
    """The position embedding of this rank's tokens (sequence parallelism), its gradient summed over the group."""

    def __init__(self, full: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.tp, self.weight = tp, full.weight

    def forward(self, pos):
        local = len(pos) // self.tp.size
        return F.embedding(pos[self.tp.rank * local:(self.tp.rank + 1) * local], local_tokens(self.weight, self.tp))


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
        if tp.sequence_parallel:
            block.ln1, block.ln2 = SequenceParallelNorm(block.ln1, tp), SequenceParallelNorm(block.ln2, tp)
    model.tok_emb = VocabParallelEmbedding(model.tok_emb, tp)
    model.head = VocabParallelHead(model.tok_emb)
    if tp.sequence_parallel:
        model.ln_f = SequenceParallelNorm(model.ln_f, tp)
        model.pos_emb = SequenceParallelPositions(model.pos_emb, tp)
    return model
