"""The optimizer's rules, each in one place: which parameters decay, the optimizer, the global-norm clip.

Every layout (one process, data parallel, ZeRO shards, pipeline stages,
tensor slices, parameter-server shards) builds its optimizer and clips
its gradient through these, so the rules cannot drift apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from mpi4py import MPI

BETAS = (0.9, 0.95)  # AdamW's betas (GPT-3, nanoGPT)
EPS_NORM = 1e-6  # torch.nn.utils.clip_grad_norm_'s guard: coef = max_norm / (norm + 1e-6)


def decays(p: torch.Tensor) -> bool:
    """Weight decay applies to matrices and embeddings (2-D and up), not to biases and LayerNorm gains (nanoGPT)."""
    return p.dim() >= 2


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Two parameter groups: the decayed ones with ``weight_decay``, the rest with 0."""
    params = list(params)
    return [{"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]


def decay_mask(params) -> torch.Tensor:
    """Bool, one entry per element of the parameters laid end to end: True where weight decay applies."""
    return torch.cat([torch.full((p.numel(),), decays(p), dtype=torch.bool) for p in params])


def build_optimizer(groups: list[dict], kind: str, lr: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95) or plain SGD over ``groups``; per-tensor loops (foreach off) so shards sum alike."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, foreach=False)
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, foreach=False)


def clip_coefficient(sum_of_squares: float, max_norm: float, comms=()) -> float:
    """min(1, max_norm / (norm + 1e-6)) of the global norm, this rank's squares summed over ``comms`` in order.

    Each rank passes the squares of the gradient elements it counts (every
    element of the model counted on exactly one rank of the groups); the
    sum is float64 and every rank gets the same coefficient.
    """
    sq = np.array([sum_of_squares], dtype=np.float64)
    for comm in comms:
        comm.Allreduce(MPI.IN_PLACE, sq, op=MPI.SUM)
    return min(1.0, max_norm / (math.sqrt(sq[0]) + EPS_NORM))
