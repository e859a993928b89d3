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

``Zero`` is the gradient synchronization (the interface of
``grad_sync.py``): the flat layout, the shards and the reduce-scatter into
``grad_shard``; ``publish`` all-gathers the updated shard. The optimizer of
the shard is a separate object over it, ``ShardedOptimizer`` (below), as for
every other layout (``ReplicatedOptimizer`` in optim.py beside data
parallelism's syncs); its ``norm_comms`` are the data-parallel ranks, each
holding a different chunk of the gradient whose norm clipping needs:

    sync = Zero(params, comm, stage, ...)             # or Zero3(stage, comm, ...)
    update = ShardedOptimizer(sync, "adamw", lr, wd)  # a fp32 copy of the shard and its moments
    ...backward, sync.finish()...                     # sync.grad_shard: this rank's summed chunk
    update.step(lr, clip)                             # update sync.shard_values, then sync.publish()
 A pipeline's tied embedding is a
``deferred`` parameter: it sits in a bucket of its own, reduce-scattered
only after its gradient has been summed between the first and the last
stage, since the shards of two stages do not line up.
"""
from __future__ import annotations

import time

import torch
from mpi4py import MPI

from ..comm import all_gather, reduce_scatter
from ..comm.buffers import as_array
from ..comm.topology import chunk_offsets
from ..costmodel.memory import state_bytes, zero_shard
from .data_parallel import bucket_groups
from .grad_sync import GradSync
from .optim import ShardOptimizer, decay_mask, flat_state, param_states

# reduce-scatter and all-gather algorithms matching an --allreduce name (Rabenseifner = halving + doubling)
PHASES = {"ring": ("ring", "ring"), "rabenseifner": ("recursive_halving", "recursive_doubling"),
          "mpi": ("mpi", "mpi")}


def memory_formula(n_params: int, stage: int, dp: int, optimizer: str = "adamw") -> dict:
    """Bytes per rank of parameters, gradients and optimizer state (fp32), as the module docstring says.

    AdamW keeps two moments (8 bytes per parameter), plain SGD none; under
    ZeRO the owned shard's fp32 copy (4 bytes) counts as optimizer state.
    The bytes and what each stage divides by dp are costmodel/memory.py's.
    """
    held = zero_shard(state_bytes("fp32", optimizer, stage), n_params, dp, stage)
    return {"params": held["weights"], "grads": held["gradients"], "optimizer": held["optimizer"]}


class Zero(GradSync):
    """Sharded gradients of ``params`` over the data-parallel communicator ``comm``: this rank's summed chunk of
    each bucket lands in ``grad_shard``, its parameters' values in ``shard_values`` (``owned`` says which)."""

    def __init__(self, params, comm, stage: int, bucket_mb: float, algorithm: str = "ring", comm_dtype: str = "fp32",
                 timeline=None, deferred=(), groups=None):
        """``groups``: the buckets, as lists of parameters in ``params`` order (ZeRO-3's layers); default:
        ``bucket_mb`` each, in the order backward finishes the parameters."""
        if stage not in (1, 2):
            raise ValueError(f"--zero {stage}: use 1 (optimizer state) or 2 (and gradients)")
        self.comm, self.stage, self.timeline, self.comm_dtype = comm, stage, timeline, comm_dtype
        self.dp, self.rank = comm.Get_size(), comm.Get_rank()
        self.rs_alg, self.ag_alg = PHASES.get(algorithm, ("ring", "ring"))
        params = [p for p in params if p.requires_grad]
        later = {id(d) for d in deferred}
        self.deferred = [p for p in params if id(p) in later]
        # deferred parameters last in the flat vector, so every other bucket stays one contiguous range
        self.params = [p for p in params if id(p) not in later] + self.deferred
        device = self.params[0].device
        n = sum(p.numel() for p in self.params)
        self.flat = torch.empty(n, device=device)
        offsets, offset = {}, 0
        with torch.no_grad():
            for p in self.params:
                self.flat[offset: offset + p.numel()].copy_(p.view(-1))
                p.data = self.flat[offset: offset + p.numel()].view_as(p)
                offsets[p] = offset
                offset += p.numel()
        self.offsets = offsets
        self.n = n
        self.buckets = self._buckets(int(bucket_mb * 2**20), groups)
        self.first_deferred = len(self.buckets) - len(self.deferred)  # the deferred parameters' buckets come last
        owned = [torch.arange(a + c[self.rank], a + c[self.rank + 1]) for a, b, c in
                 ((a, b, chunk_offsets(b - a, self.dp)) for a, b, _ in self.buckets)]
        self.owned = (torch.cat(owned) if owned else torch.zeros(0, dtype=torch.long)).to(device)
        self.slices, start = [], 0  # where each bucket's owned chunk sits in grad_shard
        for a, b, _ in self.buckets:
            c = chunk_offsets(b - a, self.dp)
            self.slices.append(slice(start, start + int(c[self.rank + 1] - c[self.rank])))
            start = self.slices[-1].stop
        self.shard_values = self.flat[self.owned]  # this rank's parameters; the optimizer updates them in place
        self.grad_shard = torch.zeros(len(self.owned), device=device)  # this rank's summed gradient, in owned order
        self.peak_bucket_bytes = 0
        self.comm_s = 0.0  # communication time of the current step
        self._pending, self._buffers = {}, {}
        if stage == 1:
            self.flat_grad = torch.zeros(n, device=device)
            for p in self.params:
                p.grad = self.flat_grad[offsets[p]: offsets[p] + p.numel()].view_as(p)
        else:
            self.flat_grad = None
            for i, (_, _, members) in enumerate(self.buckets[:self.first_deferred]):
                for p in members:
                    p.register_post_accumulate_grad_hook(lambda p, i=i: self._grad_ready(i, p))

    def _buckets(self, bucket_bytes: int, groups=None) -> list[tuple[int, int, list]]:
        """Contiguous ranges of the flat vector, grouped in the order backward finishes parameters
        (or as ``groups`` says); each deferred parameter alone in a bucket."""
        out = []
        rest = self.params[:len(self.params) - len(self.deferred)]
        for g in (groups or bucket_groups(reversed(rest), bucket_bytes)) + [[p] for p in self.deferred]:
            lo = min(self.offsets[p] for p in g)
            out.append((lo, max(self.offsets[p] + p.numel() for p in g), g))
        return out

    # -- the gradient-sync interface (forward_context, begin_backward, close: GradSync's) ----------
    # stage 2 reduce-scatters each micro-batch's buckets as they complete; stage 1 after the last
    def _reduce_scatter(self, i: int, grads: torch.Tensor) -> None:
        """Add this rank's chunk of the sum over ranks of bucket i's ``grads`` to grad_shard."""
        t0 = time.perf_counter()
        if self.comm_dtype == "fp16":  # scaled by 1/dp first, so the fp16 sum cannot overflow
            half = (grads / self.dp).half()
            mine = reduce_scatter(as_array(half), self.comm, self.rs_alg)
            self.grad_shard[self.slices[i]] += torch.as_tensor(mine, device=grads.device).float() * self.dp
        else:
            mine = reduce_scatter(as_array(grads), self.comm, self.rs_alg)
            self.grad_shard[self.slices[i]] += torch.as_tensor(mine, device=grads.device)
        self.comm_s += time.perf_counter() - t0

    def _grad_ready(self, i: int, p) -> None:
        """Stage 2: add p's gradient into its bucket; once every member has arrived, send it off.

        Interleaved pipelines run a chunk's backward twice before another chunk's
        (whose parameters may share the bucket) runs once: a member arriving
        again adds to what waits, and ``finish`` sends what is left."""
        a, b, members = self.buckets[i]
        buf = self._buffers.get(i)
        if buf is None:
            buf = self._buffers[i] = torch.zeros(b - a, device=self.grad_shard.device)
            self._pending[i] = {id(q) for q in members}
            self.peak_bucket_bytes = max(self.peak_bucket_bytes, 4 * sum(x.numel() for x in self._buffers.values()))
        off = self.offsets[p] - a
        buf[off: off + p.numel()] += p.grad.view(-1)
        p.grad = None  # the full-size gradient is gone as soon as it is added
        self._pending[i].discard(id(p))
        if not self._pending[i]:
            self._send(i)

    def _send(self, i: int) -> None:
        self._reduce_scatter(i, self._buffers.pop(i))
        del self._pending[i]

    def zero_grad(self) -> None:
        self.grad_shard.zero_()
        self.comm_s = 0.0
        if self.flat_grad is not None:
            self.flat_grad.zero_()
        else:
            for p in self.deferred:
                p.grad = None

    def finish(self, tie=None) -> tuple[float, float]:
        """After backward: ``tie()``, reduce-scatter what is left, average. Returns (comm_s, exposed_comm_s)."""
        t0 = time.perf_counter()
        if tie:
            tie()
        for i, (a, b, members) in enumerate(self.buckets):
            if self.stage == 1:
                self._reduce_scatter(i, self.flat_grad[a:b])
            elif i >= self.first_deferred:  # a deferred parameter's own bucket, now that tie() has summed it
                self._grad_ready(i, members[0])
            elif i in self._buffers:  # partly filled (interleaved chunks): every rank holds the same ones
                self._send(i)
        self.grad_shard /= self.dp
        if self.timeline and self.comm_s:
            self.timeline.add("reduce-scatter", time.perf_counter() - self.comm_s, self.comm_s)
        return self.comm_s, time.perf_counter() - t0

    def publish(self) -> float:
        """Bring every rank's updated ``shard_values`` into every replica's parameters: one all-gather per bucket.
        Returns its seconds."""
        t0 = time.perf_counter()
        with torch.no_grad():
            self.flat.index_copy_(0, self.owned, self.shard_values)
            for a, b, _ in self.buckets:
                all_gather(as_array(self.flat[a:b]), self.comm, self.ag_alg)
        spent = time.perf_counter() - t0
        if self.timeline:
            self.timeline.add("all-gather", t0, spent)
        return spent

    def memory(self) -> dict:
        """Bytes this rank holds now: parameters, gradients and the largest bucket in flight (the optimizer's
        state is ``ShardedOptimizer.memory``'s)."""
        grads = (self.flat_grad.numel() * 4 if self.flat_grad is not None else self.grad_shard.numel() * 4)
        return {"params": self.flat.numel() * 4, "grads": grads, "bucket_in_flight": self.peak_bucket_bytes}


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
