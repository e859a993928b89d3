"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): the GPT's layers with their matrices split over tp ranks.

The communication is two operators and their sequence-parallel forms
(tensor_parallel_comm.py: Megatron's ``f``, identity forward and all-reduce
backward, where a replicated activation enters a column-split layer; ``g``,
all-reduce forward and identity backward, after a row-split layer).

How the GPT is cut (rank r of t):
- attention: heads [r nh/t, (r+1) nh/t); qkv keeps those heads' rows of q,
  k and v (column-parallel), proj the matching input columns (row-parallel):
  f -> qkv -> attention on local heads -> proj -> g (f, g as above);
- MLP: fc keeps rows [r 4C/t, ...) (column), proj those columns (row):
  f -> fc -> GELU -> proj -> g; llama's gated MLP keeps its slice of gate's
  rows and of up's (``gate_up``, two sections): f -> gate_up -> SwiGLU ->
  proj -> g, and its attention turns the local heads' q and k by position
  (rotary) as the whole model does;
- token embedding: vocabulary rows [r V/t, (r+1) V/t); a rank looks up the
  ids it owns (zeros elsewhere) and g sums the lookups;
- the head shares that weight (llama's head has its own, cut the same
  way): f -> x W_r^T gives this rank's slice of the logits, and the cross-entropy is computed across slices (``vocab_parallel_ce``:
  the max, the sum of exponentials and the target logit are all-reduced),
  so the full logits never exist on one rank;
- LayerNorms (RMSNorms) and the position embedding are replicated: every rank computes
  them on the same full activations, so their gradients agree without
  communication.

``shard_model(model, tp)`` replaces a full ``GPT``'s layers in place with
these, slicing the full weights, so a model built from the same seed is
split exactly. tensor_parallel_sharding.py's ``piece`` says how each parameter is cut, and
its ``join`` puts the pieces back together for checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

from .tensor_parallel_comm import TensorParallel, column_linear, leave, local_tokens
from ..model.llama import RMSNorm, rms_norm, swiglu
from .tensor_parallel_sharding import part, piece


def _param(full: nn.Parameter, key: str, tp: TensorParallel) -> nn.Parameter:
    return nn.Parameter(piece(key, full.detach(), tp.rank, tp.size).clone())


def _replicated_bias(full: nn.Linear) -> nn.Parameter | None:
    """A row-parallel layer's bias (added once, after the sum), or None for a layer without."""
    return None if full.bias is None else nn.Parameter(full.bias.detach().clone())


def _row_output(y, proj: nn.Linear, tp: TensorParallel):
    """A row-parallel layer's output: the ranks' partial products summed (g), plus the replicated bias."""
    out = leave(F.linear(y, proj.weight), tp)
    return out if proj.bias is None else out + local_tokens(proj.bias, tp)


class ParallelAttention(nn.Module):
    """``full`` attention's heads cut over the tensor-parallel ranks (its key/value heads too, under grouped-query
    attention); the same core (``full.core``) runs them. llama's ``q`` and ``kv`` go through one GEMM, as gpt's
    ``qkv``: one gather of the sequence-parallel input."""

    def __init__(self, full, tp: TensorParallel):
        super().__init__()
        self.tp, self.core, self.rotary, self.head_size = tp, full.core, full.rotary, full.head_size
        c = full.proj.weight.shape[0]
        width = c // tp.size
        if full.rotary is None:
            biased = full.qkv.bias is not None
            self.qkv = nn.Linear(c, 3 * width, bias=biased)
            self.qkv.weight = _param(full.qkv.weight, "attn.qkv.weight", tp)
            if biased:
                self.qkv.bias = _param(full.qkv.bias, "attn.qkv.bias", tp)
            self.sections = [width] * 3
        else:
            kv = full.kv.weight.shape[0] // tp.size
            self.q, self.kv = nn.Linear(c, width, bias=False), nn.Linear(c, kv, bias=False)
            self.q.weight, self.kv.weight = _param(full.q.weight, "attn.q.weight", tp), _param(full.kv.weight,
                                                                                                "attn.kv.weight", tp)
            self.sections = [width, kv // 2, kv // 2]
        self.proj = nn.Linear(width, c, bias=full.proj.bias is not None)
        self.proj.weight = _param(full.proj.weight, "attn.proj.weight", tp)
        self.proj.bias = _replicated_bias(full.proj)

    def forward(self, x):
        B, T, _ = x.shape
        if self.rotary is None:
            weight, bias = self.qkv.weight, self.qkv.bias
        else:
            weight, bias = torch.cat([self.q.weight, self.kv.weight]), None
        q, k, v = column_linear(x, weight, bias, self.tp).split(self.sections, dim=2)  # this rank's heads
        T = q.shape[1]  # the whole sequence, also when the input held this rank's tokens only
        q, k, v = (t.view(B, T, -1, self.head_size) for t in (q, k, v))
        if self.rotary:  # v copied out of qkv's output, so q and k before rotation are not kept alive
            q, k, v = *self.rotary(q, k), v.contiguous()
        y = self.core(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(B, T, -1)
        return _row_output(y, self.proj, self.tp)


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
        return _row_output(h, self.proj, self.tp)


class ParallelGatedMLP(nn.Module):
    """llama's SwiGLU MLP: this rank's slices of gate and of up (column), the matching columns of proj (row)."""

    def __init__(self, full, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        hidden, c = full.proj.weight.shape[1], full.proj.weight.shape[0]
        self.gate_up = nn.Linear(c, 2 * hidden // tp.size, bias=False)
        self.gate_up.weight = _param(full.gate_up.weight, "mlp.gate_up.weight", tp)
        self.proj = nn.Linear(hidden // tp.size, c, bias=False)
        self.proj.weight = _param(full.proj.weight, "mlp.proj.weight", tp)

    def forward(self, x):
        return _row_output(swiglu(column_linear(x, self.gate_up.weight, None, self.tp)), self.proj, self.tp)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, full: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.rows = part(full.weight.shape[0], tp.rank, tp.size)
        self.weight = _param(full.weight, "tok_emb.weight", tp)

    def forward(self, idx):
        mine = (idx >= self.rows.start) & (idx < self.rows.stop)
        local = F.embedding((idx - self.rows.start) * mine, self.weight) * mine.unsqueeze(-1)
        return leave(local, self.tp)


class VocabParallelHead(nn.Module):
    """The head: this rank's slice of the logits, over the vocabulary rows [start, ...) of ``weight`` (the
    embedding's, when tied)."""

    def __init__(self, weight: nn.Parameter, tp: TensorParallel, start: int):
        super().__init__()
        self.weight, self.tp, self.start = weight, tp, start

    def forward(self, x):
        return column_linear(x, self.weight, None, self.tp)


class SequenceParallelNorm(nn.Module):
    """A replicated LayerNorm (or RMSNorm) on this rank's tokens (sequence parallelism): its gradients summed over the group."""

    def __init__(self, full: nn.LayerNorm | RMSNorm, tp: TensorParallel):
        super().__init__()
        self.tp, self.eps, self.rms = tp, full.eps, isinstance(full, RMSNorm)
        self.weight, self.bias = full.weight, getattr(full, "bias", None)  # an RMSNorm has no bias

    def forward(self, x):
        weight = local_tokens(self.weight, self.tp)
        if self.rms:
            return rms_norm(x, weight, self.eps)
        return F.layer_norm(x, weight.shape, weight, local_tokens(self.bias, self.tp), self.eps)


class SequenceParallelPositions(nn.Module):
    """The position embedding of this rank's tokens (sequence parallelism), its gradient summed over the group."""

    def __init__(self, full: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.tp, self.weight = tp, full.weight

    def forward(self, pos):
        """The embedding of this rank's share of the positions ``pos`` (a context-parallel rank's, or 0..T-1)."""
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
    mlp = ParallelGatedMLP if model.cfg.llama else ParallelMLP
    for block in model.blocks:
        block.attn = ParallelAttention(block.attn, tp)
        block.mlp = mlp(block.mlp, tp)
        if tp.sequence_parallel:
            block.ln1, block.ln2 = SequenceParallelNorm(block.ln1, tp), SequenceParallelNorm(block.ln2, tp)
    model.tok_emb = VocabParallelEmbedding(model.tok_emb, tp)
    rows = model.tok_emb.rows.start
    head = model.tok_emb.weight if model.tied else _param(model.head.weight, "head.weight", tp)
    model.head = VocabParallelHead(head, tp, rows)
    if tp.sequence_parallel:
        model.ln_f = SequenceParallelNorm(model.ln_f, tp)
        if model.pos_emb is not None:
            model.pos_emb = SequenceParallelPositions(model.pos_emb, tp)
    return model
