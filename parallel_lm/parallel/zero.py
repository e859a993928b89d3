"""ZeRO: shard the optimizer state (stage 1) and the gradients (stage 2) over data-parallel ranks.

Plain data parallelism keeps a full copy of everything on every rank: 4
bytes per parameter of weights, 4 of gradients and 8 of AdamW moments
(fp32). ZeRO (Rajbhandari et al., SC 2020) notices that each rank only
needs to *update* 1/Nd of the parameters if the others send it the rest
afterwards:

- all parameters live in one flat vector, cut into buckets; each bucket is
  cut into Nd chunks (``chunk_offsets``) and rank r owns chunk r of every
  bucket: its *shard*;
- after backward, a **reduce-scatter** of each bucket leaves rank r with
  the summed gradient of its chunk (instead of an all-reduce leaving every
  rank with everything, at the same cost: an all-reduce *is* a
  reduce-scatter plus an all-gather);
- rank r runs the optimizer on its shard only: a fp32 copy of its
  parameters and their two moments, 12 bytes per owned parameter;
- an **all-gather** of each bucket brings everyone's updated chunks back.

Stage 1 keeps the full gradient vector (autograd writes into it) and
reduce-scatters at the end. Stage 2 never holds it: as each bucket's
gradients arrive, a hook copies them into a bucket buffer, reduce-scatters
it, keeps its own chunk and frees the rest, so gradients cost 4/Nd bytes
per parameter plus one bucket in flight. Per rank (Psi parameters, fp32):

    stage 0:  4 Psi params + 4 Psi grads      + 8 Psi optimizer
    stage 1:  4 Psi params + 4 Psi grads      + 12 Psi / Nd optimizer
    stage 2:  4 Psi params + 4 Psi / Nd grads + 12 Psi / Nd optimizer

(the paper's mixed-precision version is 2 + 2 + K with K = 12). AdamW is
element-wise, so updating shards gives exactly what one process computes;
gradient clipping needs the global norm: one all-reduce of a scalar.
"""
from __future__ import annotations

import time

import torch

from ..comm import all_gather, reduce_scatter
from ..comm.buffers import as_array
from ..comm.topology import chunk_offsets
from .data_parallel import bucket_groups
from .optim import build_optimizer, clip_coefficient, decay_mask

# reduce-scatter and all-gather algorithms matching an --allreduce name (Rabenseifner = halving + doubling)
PHASES = {"ring": ("ring", "ring"), "rabenseifner": ("recursive_halving", "recursive_doubling"),
          "mpi": ("mpi", "mpi")}


def memory_formula(n_params: int, stage: int, dp: int, optimizer: str = "adamw") -> dict:
    """Bytes per rank of parameters, gradients and optimizer state (fp32), as the module docstring says.

    AdamW keeps two moments (8 bytes per parameter), plain SGD none; under
    ZeRO the owned shard's fp32 copy (4 bytes) counts as optimizer state.
    """
    moments = 8 if optimizer == "adamw" else 0
    return {"params": 4 * n_params,
            "grads": 4 * n_params if stage < 2 else 4 * n_params / dp,
            "optimizer": moments * n_params if stage == 0 else (4 + moments) * n_params / dp}


class Zero:
    """Sharded gradients/optimizer for ``model`` over the data-parallel communicator ``comm``."""

    def __init__(self, model, comm, stage: int, optimizer: str, lr: float, weight_decay: float,
                 bucket_mb: float, algorithm: str = "ring", timeline=None):
        if stage not in (1, 2):
            raise ValueError(f"--zero {stage}: use 1 (optimizer state) or 2 (and gradients)")
        self.comm, self.stage, self.timeline = comm, stage, timeline
        self.dp, self.rank = comm.Get_size(), comm.Get_rank()
        self.rs_alg, self.ag_alg = PHASES.get(algorithm, ("ring", "ring"))
        self.params = [p for p in model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in self.params)
        self.flat = torch.empty(n)
        offsets, offset = {}, 0
        with torch.no_grad():
            for p in self.params:
                self.flat[offset: offset + p.numel()].copy_(p.view(-1))
                p.data = self.flat[offset: offset + p.numel()].view_as(p)
                offsets[p] = offset
                offset += p.numel()
        self.offsets = offsets
        self.buckets = self._buckets(int(bucket_mb * 2**20))
        owned = [torch.arange(a + c[self.rank], a + c[self.rank + 1]) for a, b, c in
                 ((a, b, chunk_offsets(b - a, self.dp)) for a, b, _ in self.buckets)]
        self.owned = torch.cat(owned) if owned else torch.zeros(0, dtype=torch.long)
        mask = decay_mask(self.params)[self.owned]  # self.flat lays the parameters end to end in this order
        self.idx = (self.owned[mask], self.owned[~mask])  # flat positions of the decayed / other owned parameters
        self.where = (mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1))  # the same, in grad_shard
        self.slices, start = [], 0  # where each bucket's owned chunk sits in grad_shard
        for a, b, _ in self.buckets:
            c = chunk_offsets(b - a, self.dp)
            self.slices.append(slice(start, start + int(c[self.rank + 1] - c[self.rank])))
            start = self.slices[-1].stop
        self.shards = [torch.nn.Parameter(self.flat[i].clone()) for i in self.idx]
        groups = [{"params": [self.shards[0]], "weight_decay": weight_decay},
                  {"params": [self.shards[1]], "weight_decay": 0.0}]
        self.optimizer = build_optimizer(groups, optimizer, lr)
        self.grad_shard = torch.zeros(len(self.owned))  # this rank's summed gradient, in owned order
        self.peak_bucket_bytes = 0
        self.comm_s = 0.0  # communication time of the current step
        if stage == 1:
            self.flat_grad = torch.zeros(n)
            for p in self.params:
                p.grad = self.flat_grad[offsets[p]: offsets[p] + p.numel()].view_as(p)
        else:
            self.flat_grad = None
            self._pending, self._buffers = {}, {}
            for i, (_, _, members) in enumerate(self.buckets):
                for p in members:
                    p.register_post_accumulate_grad_hook(lambda p, i=i: self._grad_ready(i, p))

    def _buckets(self, bucket_bytes: int) -> list[tuple[int, int, list]]:
        """Contiguous ranges of the flat vector, grouped in the order backward finishes parameters."""
        out = []
        for g in bucket_groups(reversed(self.params), bucket_bytes):
            lo = min(self.offsets[p] for p in g)
            hi = max(self.offsets[p] + p.numel() for p in g)
            out.append((lo, hi, g))
        return out

    # -- stage 2: gradients never held in full -------------------------------------------------
    def _grad_ready(self, i: int, p) -> None:
        a, b, members = self.buckets[i]
        buf = self._buffers.get(i)
        if buf is None:
            buf = self._buffers[i] = torch.zeros(b - a)
            self._pending[i] = len(members)
            self.peak_bucket_bytes = max(self.peak_bucket_bytes, 4 * sum(x.numel() for x in self._buffers.values()))
        off = self.offsets[p] - a
        buf[off: off + p.numel()].copy_(p.grad.view(-1))
        p.grad = None  # the full-size gradient is gone as soon as it is copied
        self._pending[i] -= 1
        if self._pending[i] == 0:
            t0 = time.perf_counter()
            mine = reduce_scatter(as_array(buf), self.comm, self.rs_alg)
            self.grad_shard[self.slices[i]] += torch.from_numpy(mine)
            del self._buffers[i]
            self.comm_s += time.perf_counter() - t0

    # -- a step ----------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        self.grad_shard.zero_()
        self.comm_s = 0.0
        if self.flat_grad is not None:
            self.flat_grad.zero_()

    def reduce_gradients(self) -> float:
        """Stage 1: reduce-scatter every bucket now (stage 2 did it during backward). Returns comm seconds."""
        if self.stage == 1:
            t0 = time.perf_counter()
            for i, (a, b, _) in enumerate(self.buckets):
                mine = reduce_scatter(as_array(self.flat_grad[a:b]), self.comm, self.rs_alg)
                self.grad_shard[self.slices[i]] = torch.from_numpy(mine)
            self.comm_s += time.perf_counter() - t0
        if self.timeline and self.comm_s:
            self.timeline.add("reduce-scatter", time.perf_counter() - self.comm_s, self.comm_s)
        return self.comm_s

    def step(self, lr: float, grad_clip: float, norm_comms=(), skip_in_norm=()) -> float:
        """Average, clip by the global norm, update this rank's shard, all-gather. Returns comm seconds.

        With model parallelism the norm also sums over ``norm_comms`` (the
        other stages and tensor ranks); ``skip_in_norm`` lists parameters whose
        gradient another rank already counts (a tied embedding's second copy,
        a replicated LayerNorm on all but one tensor-parallel rank).
        """
        self.grad_shard /= self.dp
        if grad_clip > 0:
            keep = torch.ones(len(self.owned), dtype=torch.bool)
            for p in skip_in_norm:
                a = self.offsets[p]
                keep &= (self.owned < a) | (self.owned >= a + p.numel())
            counted = self.grad_shard[keep]
            coef = clip_coefficient(float(torch.sum(counted.double() ** 2)), grad_clip, (self.comm, *norm_comms))
            if coef < 1:
                self.grad_shard *= coef
        for shard, where in zip(self.shards, self.where):
            shard.grad = self.grad_shard[where]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        t0 = time.perf_counter()
        with torch.no_grad():
            for shard, i in zip(self.shards, self.idx):
                self.flat.index_copy_(0, i, shard.detach())
            for a, b, _ in self.buckets:
                all_gather(as_array(self.flat[a:b]), self.comm, self.ag_alg)
        spent = time.perf_counter() - t0
        if self.timeline:
            self.timeline.add("all-gather", t0, spent)
        return spent

    def memory(self) -> dict:
        """Bytes this rank holds now: parameters, gradients (with the largest bucket in flight), optimizer state."""
        state = sum(t.numel() * t.element_size() for s in self.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
        shards = sum(s.numel() * 4 for s in self.shards)
        grads = (self.flat_grad.numel() * 4 if self.flat_grad is not None else self.grad_shard.numel() * 4)
        return {"params": self.flat.numel() * 4, "grads": grads, "optimizer": state + shards,
                "bucket_in_flight": self.peak_bucket_bytes}
