"""How each parameter of the GPT is cut over tensor-parallel ranks, and put back together.

``piece(key, full, rank, size)`` cuts any full tensor of a parameter (its
value or its optimizer moments) the way the layers of tensor_parallel.py
hold it, and ``join(key, pieces)`` puts the pieces back together, so
checkpoints keep single-process keys and shapes whatever the layout. The
keys are the single-process parameter names; q, k and v of the attention
are cut each in its own third, so every rank keeps whole heads.
"""
from __future__ import annotations

import torch


def part(n: int, rank: int, size: int) -> slice:
    return slice(rank * n // size, (rank + 1) * n // size)


# how each sharded key is cut and joined: along which dimension, and for qkv in three sections (q, k, v)
_CUTS = {"attn.qkv.weight": ("qkv", 0), "attn.qkv.bias": ("qkv", 0), "attn.proj.weight": ("cat", 1),
         "mlp.fc.weight": ("cat", 0), "mlp.fc.bias": ("cat", 0), "mlp.proj.weight": ("cat", 1),
         "tok_emb.weight": ("cat", 0), "head.weight": ("cat", 0)}


def _cut(key: str):
    return next((rule for suffix, rule in _CUTS.items() if key.endswith(suffix)), None)


def is_sharded(key: str) -> bool:
    """Whether the parameter named ``key`` (single-process name) is split over tensor-parallel ranks."""
    return _cut(key) is not None


def piece(key: str, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s piece of the full tensor ``full`` of parameter ``key`` (itself if not sharded)."""
    rule = _cut(key)
    if rule is None or size == 1 or full.dim() == 0:
        return full
    how, dim = rule
    if how == "qkv":
        return torch.cat([third[part(third.shape[0], rank, size)] for third in full.chunk(3, dim=0)])
    return full.narrow(dim, rank * full.shape[dim] // size, full.shape[dim] // size)


def join(key: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from the tp ranks' pieces of ``key`` (the first piece when not sharded)."""
    rule = _cut(key)
    if rule is None or len(pieces) == 1 or pieces[0].dim() == 0:
        return pieces[0]
    how, dim = rule
    if how == "qkv":
        thirds = [p.chunk(3, dim=0) for p in pieces]
        return torch.cat([torch.cat([t[i] for t in thirds], dim=0) for i in range(3)], dim=0)
    return torch.cat(pieces, dim=dim)
