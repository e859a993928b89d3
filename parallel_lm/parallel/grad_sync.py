"""Gradient synchronization over the data-parallel group: one interface, five implementations.

Every layout's training step calls, on the object ``make_grad_sync`` (choose_sync.py) returns:

    sync.zero_grad()                   # before the step
    sync.forward_context(last)         # around each micro-batch's forward (torch DDP's no_sync)
    sync.begin_backward(last)          # before each micro-batch's backward; last: the step's final one
    comm_s, exposed_s = sync.finish(tie)  # after backward: gradients averaged (or reduce-scattered)
    sync.close()                       # at the end (stops a communication thread)
    with sync.full_parameters(): ...   # every parameter whole inside (ZeRO-3 gathers them; a checkpoint)

``tie`` (pipelines) sums the tied embedding's gradient between the first
and the last stage; each implementation calls it where it is correct: after
an all-reduce (the sum is linear), before ZeRO shards the gradient.

- ``naive``: one all-reduce per parameter after backward (data_parallel.py);
- ``bucketed``: flat buckets all-reduced during backward (data_parallel.py);
- ``torch-ddp``: torch's DistributedDataParallel (torch_ddp.py);
- ``zero``: ZeRO-1/2 reduce-scatter into shards (zero.py), which
  zero.py's ``ShardedOptimizer`` updates; ZeRO-3 also shards the parameters and
  gathers each layer while it runs (zero3.py);
- none: a parameter-server worker, whose gradients leave by push and pull
  (parameter_server.py), gets the interface itself, ``GradSync``.
"""
from __future__ import annotations

import contextlib


class GradSync:
    """The interface, with what a sync that needs nothing at that point does; alone, it is no synchronization:
    gradients stay this rank's own (a parameter-server worker pushes them itself)."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def forward_context(self, last: bool):
        return contextlib.nullcontext()

    def begin_backward(self, last: bool):
        pass

    def finish(self, tie=None) -> tuple[float | None, float | None]:
        if tie:
            tie()
        return 0.0, 0.0

    def full_parameters(self):
        return contextlib.nullcontext()

    def close(self):
        pass

    def abandon(self):
        """Stop any communication thread without a collective call (the communicators are revoked: ranks died)."""
        self.close()
