"""Expert parallelism: each mixture-of-experts block's experts spread over ep ranks, tokens sent by all-to-all.

The data-parallel group is cut into expert groups of ep consecutive ranks.
Rank i of a group holds experts [i E/ep, (i+1) E/ep) of every block, and
only those. Each rank still routes its own tokens (model/moe.py); then, in
every block:

  1. exchange counts: an all-to-all of the E per-expert row counts, in blocks
     of E/ep, tells each rank how many rows it gets from each rank for each
     of its experts;
  2. dispatch: a variable-count all-to-all (comm.all_to_allv, ``--alltoall``
     picks the algorithm) sends every row (C floats) to the rank holding
     its expert;
  3. the local experts run on their rows, grouped by expert across sources;
  4. combine: the same all-to-all with the counts swapped brings each output
     back to the token's rank, where it is weighted by its gate and summed.

Backward runs the two all-to-alls in reverse (``AllToAll.backward``), so an
expert's gradient on its rank sums the contributions of every token
routed to it, from every rank of the group. The ranks that hold the same
experts in other groups (dp / ep of them) sum these gradients with an
all-reduce, and the sum is divided by dp: the mean over the data-parallel
ranks, as for every other parameter, which the usual gradient sync averages.

Rows travel as float32 (bf16 has no NumPy type); an expert's rows arrive
ordered by source rank and, within one, by token, which is the order one
process gives them when ranks hold consecutive rows of the batch. So ep
ranks train as one process with the same E experts does
(tests/test_experts.py).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

from ..comm import all_to_all, all_to_allv, allreduce
from ..model.moe import ExpertMLP, through_experts
from .stopwatch import StepClock


def _exchange(x: torch.Tensor, send_rows, recv_rows, comm, algorithm: str) -> torch.Tensor:
    width = x.shape[1]
    send = x.detach().float().contiguous().cpu().numpy().reshape(-1)
    recv = np.empty(int(sum(recv_rows)) * width, np.float32)
    all_to_allv(send, [r * width for r in send_rows], recv, [r * width for r in recv_rows], comm, algorithm)
    return torch.from_numpy(recv).view(-1, width).to(device=x.device, dtype=x.dtype)


class AllToAll(torch.autograd.Function):
    """Rows to ranks (``send_rows[j]`` rows to rank j, in order); backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x, send_rows, recv_rows, comm, algorithm):
        ctx.route = (send_rows, recv_rows, comm, algorithm)
        return _exchange(x, send_rows, recv_rows, comm, algorithm)

    @staticmethod
    def backward(ctx, grad):
        send_rows, recv_rows, comm, algorithm = ctx.route
        return _exchange(grad, recv_rows, send_rows, comm, algorithm), None, None, None, None


def expert_index(name: str) -> int | None:
    """The expert a parameter name belongs to ("blocks.0.mlp.experts.3.fc.weight" -> 3), or None."""
    if ".mlp.experts." not in name:
        return None
    return int(name.split(".mlp.experts.")[1].split(".")[0])


class ExpertParallel:
    """Spread ``model``'s experts over groups of ``ep`` ranks of ``dp_comm``; see the module docstring."""

    def __init__(self, model, dp_comm, ep: int, algorithm: str, allreduce_algorithm: str = "ring",
                 clock: StepClock | None = None):
        dp_rank, self.dp = dp_comm.Get_rank(), dp_comm.Get_size()
        self.algorithm, self.allreduce_algorithm = algorithm, allreduce_algorithm
        self.clock = clock or StepClock()  # "ep": the forward all-to-alls (backward's are inside autograd)
        self.comm = dp_comm.Split(color=dp_rank // ep, key=dp_rank % ep)  # the ranks my tokens' experts live on
        self.replicas = dp_comm.Split(color=dp_rank % ep, key=dp_rank // ep)  # the ranks holding my experts too
        self.ep, self.rank = ep, self.comm.Get_rank()
        self.local = model.cfg.n_experts // ep
        self.first = self.rank * self.local
        self.params = []
        for block in model.blocks:
            block.mlp.dispatch = self.dispatch
            for e, expert in enumerate(block.mlp.experts):
                for p in expert.parameters():
                    p.requires_grad_(self.mine(e))  # the others stay as initialized, unused, never updated
                    if self.mine(e):
                        self.params.append(p)

    def mine(self, expert: int) -> bool:
        return self.first <= expert < self.first + self.local

    def dispatch(self, moe: ExpertMLP, rows: torch.Tensor, per_expert: list[int]) -> torch.Tensor:
        with self.clock.timing("ep"):
            counts = np.asarray(per_expert, dtype=np.int64)
            incoming = all_to_all(counts, np.empty_like(counts), self.comm, self.algorithm).reshape(self.ep, self.local)
            send_rows = counts.reshape(self.ep, self.local).sum(1).tolist()
            recv_rows = incoming.sum(1).tolist()
            arrived = AllToAll.apply(rows, send_rows, recv_rows, self.comm, self.algorithm)  # by source, then expert
        expert_of_row = torch.repeat_interleave(torch.arange(self.local).repeat(self.ep),
                                                torch.from_numpy(incoming.reshape(-1))).to(rows.device)
        order = torch.argsort(expert_of_row, stable=True)  # by expert; by source within one
        mine = moe.experts[self.first:self.first + self.local]
        outputs = through_experts(mine, arrived[order], incoming.sum(0).tolist())
        back = torch.empty_like(outputs).index_copy(0, order, outputs)  # in arrival order again
        with self.clock.timing("ep"):
            return AllToAll.apply(back, recv_rows, send_rows, self.comm, self.algorithm)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def finish_gradients(self) -> float:
        """Sum my experts' gradients over the ranks holding the same experts, divide by dp; returns seconds."""
        t0 = time.perf_counter()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]).cpu().numpy()
        if self.replicas.Get_size() > 1:
            allreduce(flat, self.replicas, self.allreduce_algorithm)
        flat /= self.dp
        done = torch.from_numpy(flat)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = done[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
            offset += n
        return time.perf_counter() - t0

    def squares(self) -> float:
        """Sum of squares of every expert's gradient in the model (mine, summed over my expert group)."""
        local = sum(float(torch.sum(p.grad.double() ** 2)) for p in self.params if p.grad is not None)
        return self.comm.allreduce(local, op=MPI.SUM)

    def gather(self, entries: dict) -> dict:
        """On expert-group rank 0: ``entries`` (name -> tensor; "kind:name" allowed) with every expert's entries
        replaced by those of the rank holding it. Collective over the expert group; {} elsewhere."""
        mine = {k: v.detach().cpu().clone() for k, v in entries.items()
                if expert_index(k.split(":")[-1]) is not None and self.mine(expert_index(k.split(":")[-1]))}
        parts = self.comm.gather(mine, root=0)
        if self.rank != 0:
            return {}
        merged = dict(entries)
        for part in parts:
            merged.update(part)
        return merged


def reset_routing(model) -> None:
    for block in model.blocks if model.cfg.n_experts else ():
        block.mlp.reset_counts()


def routing_summary(model, comm) -> dict | None:
    """Assignments routed per expert (summed over layers and ``comm``'s ranks since ``reset_routing``),
    their imbalance (max / mean) and the fraction dropped over capacity; None for a dense model."""
    if not model.cfg.n_experts:
        return None
    moes = [b.mlp for b in model.blocks]
    local = np.array(sum(m.routed for m in moes).tolist() + [sum(m.dropped for m in moes)], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, local, op=MPI.SUM)
    routed, dropped = local[:-1], int(local[-1])
    total = int(routed.sum())
    return {"tokens": routed.tolist(), "imbalance": float(routed.max() / routed.mean()) if total else 1.0,
            "dropped": dropped / total if total else 0.0}
