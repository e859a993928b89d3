"""The optimizer of a ZeRO shard: what each rank updates once zero.py's ``Zero`` has reduce-scattered the gradients.

The gradient sync and the optimizer are two objects, as for every other layout (``ReplicatedOptimizer`` in
optim.py beside data parallelism's syncs); they share the shard's layout, which ``Zero`` owns:

    sync = Zero(params, dp_comm, stage, ...)         # or Zero3(stage, dp_comm, ...)
    update = ShardedOptimizer(sync, "adamw", lr, wd)  # a fp32 copy of the shard and its moments
    ...backward, sync.finish()...                    # sync.grad_shard: this rank's summed chunk
    update.step(lr, clip)                            # update sync.shard_values, then sync.publish()

``norm_comms`` names the ranks over which the gradient's squares are summed for clipping: each rank holds a
different chunk, so the data-parallel group (a replicated optimizer needs none).
"""
from __future__ import annotations

import torch
from mpi4py import MPI

from .optim import ShardOptimizer, decay_mask, flat_state, param_states


class ShardedOptimizer:
    """AdamW or SGD over ``zero``'s shard (``zero.shard_values``, ``zero.grad_shard``)."""

    def __init__(self, zero, kind: str, lr: float, weight_decay: float):
        self.zero, self.norm_comms = zero, (zero.comm,)
        # zero.params lie end to end in the flat vector, in the order decay_mask lays them
        self.optimizer = ShardOptimizer(zero.shard_values, decay_mask(zero.params)[zero.owned.cpu()], kind, lr,
                                        weight_decay)

    def grads(self) -> list[torch.Tensor]:
        """The gradients this rank updates with (its shard): what loss scaling checks and unscales."""
        return [self.zero.grad_shard]

    def squares(self, skip=()) -> float:
        """Sum of squares of this rank's gradient shard, leaving out the parameters in ``skip``."""
        owned = self.zero.owned
        keep = torch.ones(len(owned), dtype=torch.bool, device=owned.device)
        for p in skip:
            a = self.zero.offsets.get(p)
            if a is not None:
                keep &= (owned < a) | (owned >= a + p.numel())
        return float(torch.sum(self.zero.grad_shard[keep].double() ** 2))

    def step(self, lr: float, coef: float = 1.0) -> float:
        """Scale the shard's gradient by ``coef`` (the clip), update the shard, publish it. Returns comm seconds."""
        if coef < 1:
            self.zero.grad_shard *= coef
        self.optimizer.step(self.zero.grad_shard, lr, self.zero.shard_values)
        return self.zero.publish()

    def state_by_param(self) -> dict:
        """Collective over the data-parallel ranks: every parameter's unsharded optimizer state on every rank."""
        zero, full = self.zero, {}
        for kind, value in self.optimizer.state().items():
            if value.dim() == 0:
                full[kind] = value
                continue
            # each element is owned by exactly one rank: the sum over ranks assembles it, exactly
            host = torch.zeros(zero.n).index_copy_(0, zero.owned.cpu(), value.cpu())
            zero.comm.Allreduce(MPI.IN_PLACE, host.numpy(), op=MPI.SUM)
            full[kind] = host.to(zero.grad_shard.device)
        return param_states(full, zero.params)

    def load_by_param(self, states: dict) -> None:
        """Take this rank's shard of every parameter's unsharded optimizer state (``state_by_param``'s form)."""
        owned = self.zero.owned
        shard = {kind: v if v.dim() == 0 else v[owned] for kind, v in flat_state(states, self.zero.params).items()}
        if shard:
            self.optimizer.load(shard)

    def memory(self) -> dict:
        """Bytes this rank holds: the sync's parameters, gradients and buffers, and the optimizer's state
        (the shard's fp32 copy and moments)."""
        held = self.zero.memory()
        state = sum(t.numel() * t.element_size() for t in self.optimizer.tensors())
        return {"params": held.pop("params"), "grads": held.pop("grads"), "optimizer": state, **held}
