"""The parts of the Llama block that GPT-2's does not have (Touvron et al. 2023; --arch llama).

- **Rotary positions** (RoPE, Su et al. 2021): no position parameters. Each
  head's query and key channels are taken in pairs (i, i + d/2), and the
  pair at position m is turned by the angle m·θᵢ, θᵢ = 10000^(-2i/d). A
  score qₘ·kₙ then depends on m - n only. The positions are the tokens'
  own: 0..T-1, or under context parallelism the chunks this rank holds
  (context_parallel.py's ``balanced_positions``), so the rotation is the
  same whichever rank computes it.
- **SwiGLU MLP** (Shazeer 2020): down(silu(gate(x)) ∘ up(x)), three
  matrices and no biases. ``gate`` and ``up`` are stored as one matrix
  ``gate_up`` of 2F rows, gate's F then up's F, so tensor parallelism cuts
  it in two sections like attention's q, k, v (tensor_parallel_sharding.py).
- **RMSNorm** (Zhang & Sennrich 2019): x / rms(x) · w, no mean, no bias.

Both are fused as the kernels of large runs are (Megatron's SwiGLU and
RMSNorm): backward keeps only the input (and one 1/rms per token) and
recomputes the rest. Composed from torch's operators, autograd would also
keep silu(gate) and the normalized input: 43% more activation memory than
the cost model's count for a tiny llama, measured with ``train``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_BASE = 10000.0
NORM_EPS = 1e-5


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` with each pair of channels (i, i + d/2) of its last dimension turned by the angles whose cos and sin
    are given (broadcast against x's (..., d/2))."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class Rotary:
    """Rotary position embedding of queries and keys. ``positions``: the positions of the T
    tokens an attention sees (None: 0..T-1). Holds no parameters; shared by every block of a model."""

    def __init__(self, head_dim: int, positions: torch.Tensor | None = None, base: float = ROPE_BASE):
        self.inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,)
        self.positions = positions
        self._angles = {}  # (T, dtype, device) -> (cos, sin)

    def angles(self, T: int, dtype, device):
        key = (T, dtype, device)
        if key not in self._angles:
            pos = self.positions if self.positions is not None else torch.arange(T)
            if len(pos) != T:
                raise ValueError(f"rotary positions for {len(pos)} tokens, the attention sees {T}")
            turn = pos.double()[:, None] * self.inv_freq[None, :]  # (T, d/2), in fp64 then rounded once
            self._angles[key] = (turn.cos().to(dtype=dtype, device=device), turn.sin().to(dtype=dtype, device=device))
        return self._angles[key]

    def __call__(self, q: torch.Tensor, k: torch.Tensor):
        """q and k (B, T, heads, d) turned by their positions; (B, T, heads, d) as the attention's projection
        takes them, so the core's output needs no copy to reach it."""
        cos, sin = (a[:, None, :] for a in self.angles(q.shape[1], q.dtype, q.device))  # (T, 1, d/2)
        return rotate(q, cos, sin), rotate(k, cos, sin)


class GatedMLP(nn.Module):
    """SwiGLU: proj(silu(gate x) * (up x)), gate and up stored together as ``gate_up``."""

    def __init__(self, cfg):
        super().__init__()
        self.gate_up = nn.Linear(cfg.n_embd, 2 * cfg.ffn_hidden, bias=False)
        self.proj = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.proj(swiglu(self.gate_up(x)))


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up; keeps only its input for backward."""

    @staticmethod
    def forward(ctx, gate_up):
        ctx.save_for_backward(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors[0].chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        d_gate = grad * up * sig * (1 + gate * (1 - sig))  # d silu(g)/dg = s + g s (1 - s)
        return torch.cat([d_gate, grad * gate * sig], dim=-1)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the gate and up halves of the last dimension."""
    return _SwiGLU.apply(gate_up)


class _RMSNorm(torch.autograd.Function):
    """x / rms(x) * w over the last dimension, in fp32 at least; keeps x and 1/rms per token for backward."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        wide = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(wide)
        inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, inv)
        return (xf * inv * weight.to(wide)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, inv = ctx.saved_tensors
        xf, g = x.to(inv.dtype), grad.to(inv.dtype)
        normed = xf * inv
        gw = g * weight.to(inv.dtype)
        dx = inv * (gw - normed * (gw * normed).mean(-1, keepdim=True))
        dw = (g * normed).reshape(-1, x.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def norm(cfg) -> nn.Module:
    """The block's normalization: RMSNorm for llama, LayerNorm for gpt."""
    return RMSNorm(cfg.n_embd) if cfg.llama else nn.LayerNorm(cfg.n_embd)
