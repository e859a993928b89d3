"""A mixture-of-experts MLP: a router sends each token to its top-k of E expert MLPs.

    probs = softmax(router(x))            # (N, E), float32
    gate, expert = top-k of probs         # each token's k experts and their weights
    y = sum over its kept experts of gate x expert_e(x)

Routing follows Switch Transformer and GShard (Fedus et al. 2021; Lepikhin
et al. 2020): the gate is the router's probability, un-normalized, so the
router learns through the output as well as through the balance loss.

- **Capacity.** Each expert takes at most C = ceil(capacity_factor x T x k / E)
  assignments per sequence of T tokens. All first choices queue before
  any second choice, and within a choice earlier tokens queue first; an
  assignment over the capacity is dropped (the token keeps its residual
  only) and counted. A capacity_factor of 0 means no limit.
- **Balance loss** (Switch eq. 4, per sequence, then the mean over
  sequences): E x sum_e f_e x P_e, with f_e the fraction of the sequence's
  assignments routed to e (before capacity) and P_e the mean router
  probability of e. It is smallest when the load is uniform; the model adds
  ``aux_loss_coef`` times its sum over layers to the training loss.

Capacity and balance are per sequence, so they do not depend on how a
batch is cut among ranks: expert-parallel training on K ranks routes
exactly as one process does (tests/test_experts.py).

``ExpertMLP.dispatch`` runs the experts on their rows: here in one
process; expert parallelism (parallel/expert_parallel.py) replaces it
with the all-to-all to the ranks that hold the experts and back.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def within_capacity(expert: torch.Tensor, n_experts: int, capacity_factor: float) -> torch.Tensor:
    """(B, T, k) chosen experts -> (B, T, k) bool: which assignments fit their expert's per-sequence capacity."""
    B, T, k = expert.shape
    if capacity_factor <= 0:
        return torch.ones_like(expert, dtype=torch.bool)
    capacity = math.ceil(capacity_factor * T * k / n_experts)
    queue = expert.transpose(1, 2).reshape(B, k * T)  # all first choices, then all second choices, ...
    onehot = F.one_hot(queue, n_experts)  # (B, kT, E)
    place = (onehot.cumsum(1) * onehot).sum(-1) - 1  # each assignment's place in its expert's queue
    return (place < capacity).view(B, k, T).transpose(1, 2)


def balance_loss(probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Switch's load-balancing loss per sequence, averaged: probs (B, T, E), expert (B, T, k)."""
    B, T, E = probs.shape
    routed = F.one_hot(expert.reshape(B, -1), E).float().mean(1)  # f_e: (B, E)
    return (E * (routed * probs.mean(1)).sum(-1)).mean()


class ExpertMLP(nn.Module):
    """The MLP of a block, as ``n_experts`` GELU MLPs behind a top-k router."""

    def __init__(self, cfg, make_mlp):
        super().__init__()
        self.n_experts, self.top_k, self.capacity_factor = cfg.n_experts, cfg.top_k, cfg.capacity_factor
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(make_mlp(cfg) for _ in range(cfg.n_experts))
        self.dispatch = run_experts  # parallel/expert_parallel.py swaps in the all-to-all
        self.aux = None  # the balance loss of the last forward
        self.routed = torch.zeros(cfg.n_experts, dtype=torch.long)  # assignments per expert since reset_counts
        self.dropped = 0

    def reset_counts(self) -> None:
        self.routed.zero_()
        self.dropped = 0

    def forward(self, x):
        B, T, C = x.shape
        flat = x.reshape(B * T, C)
        probs = F.softmax(self.router(flat).float(), dim=-1)  # (N, E)
        gate, expert = probs.topk(self.top_k, dim=-1)  # (N, k) each
        keep = within_capacity(expert.view(B, T, -1), self.n_experts, self.capacity_factor).reshape(-1)
        self.aux = balance_loss(probs.view(B, T, -1), expert.view(B, T, -1))
        with torch.no_grad():
            self.routed += torch.bincount(expert.reshape(-1).cpu(), minlength=self.n_experts)
            self.dropped += int((~keep).sum())
        token = torch.arange(B * T, device=x.device).repeat_interleave(self.top_k)[keep]
        chosen, weight = expert.reshape(-1)[keep], gate.reshape(-1)[keep]
        order = torch.argsort(chosen, stable=True)  # grouped by expert; token order kept within each
        token, chosen, weight = token[order], chosen[order], weight[order]
        per_expert = torch.bincount(chosen, minlength=self.n_experts).tolist()
        y = self.dispatch(self, flat[token], per_expert)  # (A, C), the rows' expert outputs in the same order
        out = torch.zeros_like(flat).index_add(0, token, y * weight.unsqueeze(1).to(y.dtype))
        return out.view(B, T, C)


def through_experts(experts, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows grouped by expert (``counts[i]`` rows for ``experts[i]``, in order) through their experts."""
    if not rows.numel():
        return rows * 0
    return torch.cat([expert(piece) for expert, piece in zip(experts, rows.split(counts))])


def run_experts(moe: ExpertMLP, rows: torch.Tensor, per_expert: list[int]) -> torch.Tensor:
    """``ExpertMLP.dispatch`` in one process: every expert is here."""
    return through_experts(moe.experts, rows, per_expert)
