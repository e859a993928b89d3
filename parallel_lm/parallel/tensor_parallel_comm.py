"""Tensor parallelism's communication (Megatron-LM, Shoeybi et al. 2019): the group and its mappings.

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

The layers that use these are in tensor_parallel.py; how each parameter is
cut is in tensor_parallel_sharding.py.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from mpi4py import MPI

from ..comm import ALL_GATHER_ALGORITHMS, REDUCE_SCATTER_ALGORITHMS, all_gather, allreduce, reduce_scatter
from ..comm.buffers import as_array
from .stopwatch import StepClock


class TensorParallel:
    """A tensor-parallel group: ``comm``, the all-reduce ``algorithm``, and ``seconds`` spent communicating.
    ``sequence_parallel``: activations between the tensor-parallel regions are cut along the sequence."""

    def __init__(self, comm, algorithm: str = "ring", sequence_parallel: bool = False, clock: StepClock | None = None):
        self.comm, self.algorithm = comm, algorithm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.sequence_parallel = sequence_parallel and self.size > 1
        self.clock = clock or StepClock()  # seconds in this group's collectives, under "tp"

    def _sequence_major(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> a flat fp32 copy in (T, B, C) order, where rank r's tokens are one contiguous chunk."""
        return t.detach().float().transpose(0, 1).contiguous().view(-1)

    def gather_sequence(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T/t, C) on each rank -> (B, T, C): the ranks' token ranges put together (all-gather)."""
        with self.clock.timing("tp"):
            B, local, C = t.shape
            full = torch.empty(local * self.size * B * C)
            full.view(self.size, -1)[self.rank] = self._sequence_major(t)
            algorithm = self.algorithm if self.algorithm in ALL_GATHER_ALGORITHMS else "ring"
            all_gather(as_array(full), self.comm, algorithm)
        return full.view(local * self.size, B, C).transpose(0, 1).to(t.dtype)

    def scatter_sequence(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) partial sums on each rank -> (B, T/t, C): this rank's tokens, summed over ranks."""
        with self.clock.timing("tp"):
            B, T, C = t.shape
            flat = self._sequence_major(t).clone()
            algorithm = self.algorithm if self.algorithm in REDUCE_SCATTER_ALGORITHMS else "ring"
            mine = torch.from_numpy(reduce_scatter(as_array(flat), self.comm, algorithm).copy())
        return mine.view(T // self.size, B, C).transpose(0, 1).to(t.dtype)

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the group (fp32 on the wire), as a new tensor of t's dtype."""
        with self.clock.timing("tp"):
            out = t.detach().float().contiguous().clone()
            allreduce(as_array(out.view(-1)), self.comm, self.algorithm)
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
