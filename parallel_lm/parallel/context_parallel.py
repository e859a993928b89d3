"""Context parallelism: every sequence cut over cp ranks, attention computed by passing keys and values around a ring.

Each rank of a context-parallel group holds T/cp of the tokens of every
sequence in its batch. Everything but attention is per token and needs
nothing from the other ranks. Attention needs every earlier token, so the
key/value blocks travel around the ring of the group. On step s, rank r
holds the block of rank r - s: it attends its queries to that block while
the next block is already on its way (``Isend``/``Irecv``, overlapped with
the computation). After cp steps it has seen every block (Liu et al.,
"Ring Attention with Blockwise Transformers", 2023).

**Online softmax** (Milakov & Gimelshein 2018; FlashAttention). Blocks
arrive one at a time, so the softmax is accumulated per query row: a
running maximum m, a running sum l of exp(score - m) and a running output
o. A block with a larger maximum m' rescales both by exp(m - m') before
adding its own terms. After the last block, out = o / l, and
lse = m + log l is kept for backward.

**Backward** is exact: with lse saved, each block's probabilities
P = exp(QKᵀ/√d - lse) are recomputed. dV_j += PᵀdO, dS = P ∘ (dO Vⱼᵀ - D)
with D = rowsum(dO ∘ O), dQ += dS Kⱼ/√d, dKⱼ += dSᵀQ/√d. The key/value
blocks go around the ring once more, carrying their dK and dV
accumulators. The last step brings every block home with the gradient
from every rank's queries.

**Causal load balancing.** With causal attention, a rank holding the end
of the sequence has more to attend to than one holding the start. So
each sequence is cut into 2·cp chunks, and rank r takes chunks r and
2·cp-1-r (an early and a late one): every rank does the same work. The
masks come from the tokens' positions in the sequence, which this object
knows for every rank.

Requires T divisible by 2·cp. The loss on each rank is the mean over its
tokens; every rank holds as many as the others, so the mean over the
group is the sequence's. The data-parallel all-reduce runs over dp x cp
ranks, averaging the gradients of every parameter.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

from .stopwatch import StepClock

TAG = 41


def balanced_positions(seq_len: int, size: int, rank: int) -> torch.Tensor:
    """Positions of rank ``rank``'s tokens: chunks r and 2·size-1-r of 2·size equal chunks."""
    n = seq_len // (2 * size)
    late = 2 * size - 1 - rank
    return torch.cat([torch.arange(rank * n, (rank + 1) * n), torch.arange(late * n, (late + 1) * n)])


class ContextParallel:
    """A context-parallel group over ``comm``: which tokens each rank holds, and ring attention among them."""

    def __init__(self, comm, seq_len: int, clock: StepClock | None = None):
        self.comm, self.size, self.rank = comm, comm.Get_size(), comm.Get_rank()
        self.positions_of = [balanced_positions(seq_len, self.size, r) for r in range(self.size)]
        self.positions = self.positions_of[self.rank]
        self.clock = clock or StepClock()  # "cp": waiting for key/value blocks (not hidden behind the computation)

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids or targets -> (B, T/cp): this rank's tokens."""
        return t[:, self.positions]

    def shard_positions(self, model) -> None:
        """Look ``model``'s position embedding up at this rank's positions. (Its attention runs the ring, and
        rotary positions turn by this rank's positions, because the model was built with
        ``attention=self.attention, positions=self.positions``.)"""
        if model.pos_emb is not None:
            model.pos_emb = ContextPositions(model.pos_emb, self)

    def attention(self, q, k, v):
        return RingAttention.apply(q, k, v, self)

    def _mask(self, source: int, device) -> torch.Tensor:
        """(Tq, Tk): which keys of rank ``source``'s block each of my queries may see (causal, by position)."""
        return (self.positions_of[source].to(device)[None, :] <= self.positions.to(device)[:, None])

    def _pass(self, blocks: list[torch.Tensor]):
        """Start sending ``blocks`` (one packed fp32 buffer) to the right and receiving the left's: (wait, unpack)."""
        send = torch.cat([b.detach().float().reshape(-1) for b in blocks]).cpu().numpy()
        recv = np.empty_like(send)
        right, left = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        requests = [self.comm.Irecv(recv, source=left, tag=TAG), self.comm.Isend(send, dest=right, tag=TAG)]

        def finish():
            with self.clock.timing("cp"):
                MPI.Request.Waitall(requests)
            flat = torch.from_numpy(recv).to(blocks[0].device)
            return [piece.view_as(b) for piece, b in zip(flat.split([b.numel() for b in blocks]), blocks)]
        return finish


def _widen(t: torch.Tensor, group: int) -> torch.Tensor:
    """Key/value heads (B, Hkv, T, D) repeated for the ``group`` query heads that share each (grouped-query)."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def _narrow(t: torch.Tensor, group: int) -> torch.Tensor:
    """A gradient over the query heads (B, H, T, D) summed back onto the key/value heads they share."""
    return t if group == 1 else t.unflatten(1, (-1, group)).sum(2)


class RingAttention(torch.autograd.Function):
    """softmax(QKᵀ/√d + causal mask)V over the whole sequence, with this rank's queries, keys and values. Keys
    and values may have fewer heads than queries (grouped-query attention): they travel the ring as they are,
    and meet their queries widened."""

    @staticmethod
    def forward(ctx, q, k, v, cp: ContextParallel):
        scale, group = 1.0 / math.sqrt(q.shape[-1]), q.shape[1] // k.shape[1]
        qf, block = q.float(), [k.float(), v.float()]
        B, H, T, D = q.shape
        out = torch.zeros(B, H, T, D, device=q.device)
        high = torch.full((B, H, T), -math.inf, device=q.device)
        total = torch.zeros(B, H, T, device=q.device)
        for step in range(cp.size):
            pending = cp._pass(block) if step < cp.size - 1 else None
            kb, vb = (_widen(t, group) for t in block)
            scores = (qf @ kb.transpose(-1, -2) * scale).masked_fill(~cp._mask((cp.rank - step) % cp.size, q.device),
                                                                     -math.inf)
            new_high = torch.maximum(high, scores.amax(-1))
            finite = torch.where(torch.isinf(new_high), torch.zeros_like(new_high), new_high)  # rows with nothing yet
            p = torch.exp(scores - finite.unsqueeze(-1))
            rescale = torch.exp(high - finite)
            total = total * rescale + p.sum(-1)
            out = out * rescale.unsqueeze(-1) + p @ vb
            high = new_high
            if pending:
                block = pending()
        out = out / total.unsqueeze(-1)
        ctx.cp, ctx.scale, ctx.group = cp, scale, group
        ctx.save_for_backward(q, k, v, out, high + total.log())
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        cp, scale, group = ctx.cp, ctx.scale, ctx.group
        qf, do = q.float(), grad_out.float()
        delta = (do * out).sum(-1, keepdim=True)
        dq = torch.zeros_like(qf)
        kf = k.float()
        block = [kf, v.float(), torch.zeros_like(kf), torch.zeros_like(kf)]  # k, v, dk, dv travel together
        for step in range(cp.size):
            kh, vh, dkb, dvb = block
            kb, vb = _widen(kh, group), _widen(vh, group)
            scores = qf @ kb.transpose(-1, -2) * scale
            p = torch.exp(scores - lse.unsqueeze(-1)) * cp._mask((cp.rank - step) % cp.size, q.device)
            dvb = dvb + _narrow(p.transpose(-1, -2) @ do, group)
            ds = p * (do @ vb.transpose(-1, -2) - delta)
            dq = dq + ds @ kb * scale
            dkb = dkb + _narrow(ds.transpose(-1, -2) @ qf, group) * scale
            block = cp._pass([kh, vh, dkb, dvb])()  # after cp steps every block is home with all its gradient
        _, _, dk, dv = block
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


class ContextPositions(nn.Module):
    """The position embedding looked up at this rank's positions (the model asks for 0..T/cp-1). ``full``: the
    whole table, or its sequence-parallel form, which then takes its tensor rank's share of these positions."""

    def __init__(self, full: nn.Module, cp: ContextParallel):
        super().__init__()
        self.cp, self.weight = cp, full.weight  # the single-process name, pos_emb.weight
        self.lookup = full.forward if not isinstance(full, nn.Embedding) else lambda pos: F.embedding(pos, self.weight)

    def forward(self, pos):
        return self.lookup(self.cp.positions.to(pos.device))
