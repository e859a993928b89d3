"""Activation recomputation: keep a function's inputs, not its intermediates, and run it again in backward.

    y = recomputed(fn, x)    # forward under no_grad: only x is saved for backward
                             # backward: fn(x) once more with grad, then backpropagate through it

``--recompute full`` wraps each transformer block (its input is all it keeps;
Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost");
``--recompute selective`` wraps only the attention core softmax(QKᵀ)V,
keeping Q, K and V (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", section 5).

It is the reentrant form of ``torch.utils.checkpoint``, written out so that
what it saves goes through ``ctx.save_for_backward`` and shows up in
``saved_bytes`` like every other saved tensor. Parameters used inside ``fn``
get their gradients from the inner backward. The recomputation runs under
the autocast state of the forward, and the model has no dropout, so it
reproduces the forward's values exactly: gradients equal the run without it.

``saved_bytes()`` counts the bytes autograd keeps for backward while it is
open (each storage once, parameters excluded): the measured activation
memory that trainer.py prints beside costmodel/transformer.py's formula.
"""
from __future__ import annotations

import contextlib

import torch

MODES = ("none", "selective", "full")


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, *inputs):
        ctx.fn = fn
        ctx.autocast = {kind: (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
                        for kind in {t.device.type for t in inputs}}
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return fn(*inputs)

    @staticmethod
    def backward(ctx, *grads):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            for kind, (on, dtype) in ctx.autocast.items():
                stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=on))
            out = ctx.fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, grads)
        return (None,) + tuple(t.grad for t in inputs)


def recomputed(fn, *inputs):
    """``fn(*inputs)``, keeping only ``inputs`` for backward (when autograd records; else a plain call)."""
    if not torch.is_grad_enabled():
        return fn(*inputs)
    return _Recomputed.apply(fn, *inputs)


@contextlib.contextmanager
def saved_bytes(exclude=()):
    """Yields a one-item list that ends up holding the bytes autograd saved inside the block.

    Each storage counts once (Q, K and V are views of one QKV output); storages
    of ``exclude`` (the parameters) do not count.
    """
    skip = {p.untyped_storage()._cdata for p in exclude}  # the storage itself: ZeRO-3 reallocates its memory
    seen, total = set(), [0]

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in skip and storage._cdata not in seen:
            seen.add(storage._cdata)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
