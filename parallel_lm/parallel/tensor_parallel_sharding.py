"""How each parameter of the GPT is cut over tensor-parallel ranks, and put back together.

``piece(key, full, rank, size)`` cuts any full tensor of a parameter (its
value or its optimizer moments) the way the layers of tensor_parallel.py
hold it, and ``join(key, pieces)`` puts the pieces back together, so
checkpoints keep single-process keys and shapes whatever the layout. The
keys are the single-process parameter names. A matrix that stacks several
(attention's q, k and v, or llama's k and v; llama's gate and up) is cut section by section:
each rank keeps its slice of each, so whole heads, and gate rows beside
the up rows they multiply.
"""
from __future__ import annotations

import torch


def part(n: int, rank: int, size: int) -> slice:
    return slice(rank * n // size, (rank + 1) * n // size)


# how each sharded key is cut and joined: in how many stacked sections, along which dimension
_CUTS = {"attn.qkv.weight": (3, 0), "attn.qkv.bias": (3, 0), "attn.q.weight": (1, 0), "attn.kv.weight": (2, 0),
         "attn.proj.weight": (1, 1),
         "mlp.fc.weight": (1, 0), "mlp.fc.bias": (1, 0), "mlp.gate_up.weight": (2, 0), "mlp.proj.weight": (1, 1),
         "tok_emb.weight": (1, 0), "head.weight": (1, 0)}


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
    sections, dim = rule
    return torch.cat([s.narrow(dim, rank * s.shape[dim] // size, s.shape[dim] // size)
                      for s in full.chunk(sections, dim=dim)], dim=dim)


def join(key: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from the tp ranks' pieces of ``key`` (the first piece when not sharded)."""
    rule = _cut(key)
    if rule is None or len(pieces) == 1 or pieces[0].dim() == 0:
        return pieces[0]
    sections, dim = rule
    cut = [p.chunk(sections, dim=dim) for p in pieces]
    return torch.cat([torch.cat([c[i] for c in cut], dim=dim) for i in range(sections)], dim=dim)
