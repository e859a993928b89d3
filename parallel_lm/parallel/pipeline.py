"""Pipeline parallelism: the layers cut into stages, activations passed along with Send/Recv.

Stage s of p holds layers [s L/p, (s+1) L/p) (a ``Chunk``); the first also the
embeddings, the last the final LayerNorm and the head. A batch is cut
into m micro-batches; stage s receives micro-batch i's activations
(micro, T, C) from stage s-1, runs its layers, and sends the result to
stage s+1; in backward the gradient with respect to those activations
travels the other way. Sends are ``Isend`` (never blocking), receives are
blocking ``Recv``; the schedules never wait in a cycle.

Schedules (the order of forwards and backwards, and the bubble each
leaves) are in schedules.py: GPipe, 1F1B and interleaved 1F1B.

A gpt head shares its weight with the token embedding (tied); with p > 1
the first and the last stage each hold a copy, and their gradients are
summed between them (``tie_gradients``), as Megatron-LM does. A llama head
has its own weight, on the last stage only.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

from ..model.gpt import balance_term, embed
from .schedules import ops_for

TAG_TIE, TAG_FIRST = 33, 100  # stage-to-stage messages: TAG_FIRST + 2 (virtual stage x m + micro-batch) + kind


class Chunk(nn.Module):
    """Virtual stage ``index`` of ``count``: its layers of a full ``GPT`` (the same module objects, so
    names and values match it). The first chunk also holds the embeddings, the last the head.

    ``sharded``: the model's layers are tensor-parallel (``tensor_parallel.shard_model``),
    so the loss is computed over vocabulary slices.
    """

    def __init__(self, model, index: int, count: int, sharded: bool = False):
        super().__init__()
        per = model.cfg.n_layer // count
        self.first, self.last, self.sharded, self.cfg = index == 0, index == count - 1, sharded, model.cfg
        self.lo = index * per
        self.blocks = nn.ModuleList(model.blocks[self.lo: self.lo + per])
        if self.first:
            self.tok_emb, self.pos_emb = model.tok_emb, model.pos_emb
        if self.last:
            self.ln_f, self.head = model.ln_f, model.head
        self.prefixes = [f"blocks.{self.lo + i}." for i in range(per)] + \
            (["tok_emb.", "pos_emb."] if self.first else []) + (["ln_f.", "head."] if self.last else [])

    def forward(self, x):
        """Token ids (first chunk) or activations (B, T, C) in; activations or logits out."""
        if self.first:
            x = embed(self.tok_emb, self.pos_emb, x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)) if self.last else x

    def loss(self, logits, targets):
        """Mean cross-entropy; over vocabulary slices when the head is tensor-parallel. In training, a
        mixture of experts adds its balance loss (one chunk holds every block: config.py refuses pp > 1)."""
        if self.sharded:
            from .tensor_parallel import vocab_parallel_ce
            ce = vocab_parallel_ce(logits, targets, self.head)
        else:
            ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return ce + balance_term(self.blocks, self.cfg) if self.training else ce


class Stage(nn.Module):
    """Pipeline rank ``stage`` of ``stages``: its ``virtual`` chunks of the model.

    Chunk c of this rank is virtual stage c·p + stage of p·v (interleaved
    1F1B, Narayanan et al. 2021, section 2.2): with v = 1 it is the usual
    contiguous cut, and pp = 1 is one stage holding everything.
    """

    def __init__(self, model, stage: int, stages: int, sharded: bool = False, virtual: int = 1):
        super().__init__()
        self.stages, self.virtual = stages, virtual
        self.chunks = nn.ModuleList(Chunk(model, c * stages + stage, stages * virtual, sharded) for c in range(virtual))
        self.first, self.last = self.chunks[0].first, self.chunks[-1].last
        self.tied = model.tok_emb.weight if model.tied and (self.first or self.last) else None

    def forward(self, x):
        """Token ids or activations in, activations or logits out: the whole stage, when it is one chunk."""
        if self.virtual > 1:
            raise RuntimeError("an interleaved stage runs chunk by chunk (Pipeline.run)")
        return self.chunks[0](x)

    def loss(self, logits, targets):
        return self.chunks[-1].loss(logits, targets)

    def owns(self, key: str) -> bool:
        return any(key.startswith(p) for c in self.chunks for p in c.prefixes)


def _to_host(t: torch.Tensor) -> np.ndarray:
    """fp32, contiguous, in host memory: what travels between stages."""
    return t.detach().float().contiguous().cpu().numpy()


class Pipeline:
    """Runs one step's micro-batches through this rank's stage over ``comm`` (the pipeline group).

    ``forward``: the module to call for a one-chunk stage (the stage itself, or
    a wrapper around it such as torch DDP); ``device``: where the stage lives.
    ``measure``: count the bytes the next forward (one micro-batch through one chunk)
    saves for backward (``activation_bytes`` afterwards, of chunk ``activation_chunk``;
    model/recompute.py's ``saved_bytes``).
    """

    def __init__(self, stage: Stage, comm, kind: str, timeline=None, forward=None, device=None):
        self.stage, self.comm, self.kind, self.timeline = stage, comm, kind, timeline
        self.forward = forward or stage
        self.device = device or torch.device("cpu")
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.measure, self.activation_bytes, self.activation_chunk = False, None, None
        self._listed: dict[int, list] = {}  # m -> this rank's schedule, listed at the first step with m micro-batches

    def _span(self, name):
        return self.timeline.span(name) if self.timeline else contextlib.nullcontext()

    def _ops(self, m: int) -> list[tuple[str, int, int]]:
        if m not in self._listed:
            self._listed[m] = ops_for(self.kind, m, self.rank, self.size, self.stage.virtual)
        return self._listed[m]

    def peak_in_flight(self, m: int) -> int:
        """The most forwards whose activations this rank holds at once under its schedule
        (micro-batches of one chunk: the whole stage when v = 1)."""
        live = peak = 0
        for op, _, _ in self._ops(m):
            live += 1 if op == "F" else -1
            peak = max(peak, live)
        return peak

    def _tag(self, kind: int, rank: int, chunk: int, i: int, m: int) -> int:
        """The tag of micro-batch i's activation (kind 0) or gradient (1) going to ``rank``'s ``chunk``."""
        return TAG_FIRST + 2 * ((chunk * self.size + rank) * m + i) + kind

    def _recv(self, shape, source, tag) -> torch.Tensor:
        buf = np.empty(shape, dtype=np.float32)
        self.comm.Recv(buf, source=source, tag=tag)
        return torch.from_numpy(buf).to(self.device)

    def _send(self, t: torch.Tensor, dest: int, tag: int, sends: list) -> None:
        host = _to_host(t)
        sends.append((self.comm.Isend(host, dest=dest, tag=tag), host))

    def _neighbours(self, chunk: int) -> tuple[int, int, int, int]:
        """(previous rank, its chunk, next rank, its chunk) around this rank's ``chunk`` in the virtual pipeline."""
        p, r = self.size, self.rank
        return (r - 1) % p, chunk - (r == 0), (r + 1) % p, chunk + (r == p - 1)

    def _forward(self, chunk, inp, y, autocast, sync, last):
        with autocast(), sync.forward_context(last):
            out = self.forward(inp) if self.stage.virtual == 1 else chunk(inp)
            return chunk.loss(out, y.to(self.device)) if chunk.last else out

    def run(self, micro_batches, shape, autocast, scale: float, sync, weights=None) -> tuple[float, float]:
        """Forward and backward every micro-batch ((x, y) pairs) per the schedule; gradients accumulate.

        ``shape``: (micro, T, C) of the activations between stages. ``scale``:
        the loss is multiplied by it before backward (fp16 loss scaling).
        ``sync``: the gradient synchronization (``grad_sync``), told which
        backward is the step's last, so it communicates only after that one.
        ``weights``: each micro-batch's share of the step's loss (its rows x dp / global batch, when
        the ranks hold unequal shares); None: 1/m each. Micro-batches may differ in rows.
        Returns (mean loss on the last stage, else 0.0; seconds spent computing).
        """
        m = len(micro_batches)
        inputs, outputs, losses, sends = {}, {}, [], []
        compute = 0.0
        ops = self._ops(m)
        final_backward = max(j for j, op in enumerate(ops) if op[0] == "B")
        for j, (op, c, i) in enumerate(ops):
            chunk = self.stage.chunks[c]
            prev, prev_c, nxt, nxt_c = self._neighbours(c)
            x, y = micro_batches[i]
            rows_shape = (len(x),) + tuple(shape[1:])
            name = f"{'forward' if op == 'F' else 'backward'} {i}" + (f" chunk {c}" if self.stage.virtual > 1 else "")
            if op == "F":
                last = i == m - 1
                inp = x.to(self.device) if chunk.first else \
                    self._recv(rows_shape, prev, self._tag(0, self.rank, c, i, m)).requires_grad_()
                t0 = time.perf_counter()
                with self._span(name), self._measured(c):
                    out = self._forward(chunk, inp, y, autocast, sync, last)
                compute += time.perf_counter() - t0
                if chunk.last:
                    losses.append(float(out.detach()))
                    out = out * (scale / m if weights is None else scale * weights[i])
                else:
                    self._send(out, nxt, self._tag(0, nxt, nxt_c, i, m), sends)
                inputs[c, i], outputs[c, i] = inp, out
            else:
                inp, out = inputs.pop((c, i)), outputs.pop((c, i))
                grad = None if chunk.last else self._recv(rows_shape, nxt, self._tag(1, self.rank, c, i, m))
                sync.begin_backward(j == final_backward)
                t0 = time.perf_counter()
                with self._span(name):
                    out.backward(grad)
                compute += time.perf_counter() - t0
                if not chunk.first:
                    self._send(inp.grad, prev, self._tag(1, prev, prev_c, i, m), sends)
        MPI.Request.Waitall([r for r, _ in sends])
        if losses and weights is not None:  # the rows-weighted mean of this rank's micro-batches
            return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights), compute
        return (sum(losses) / m if losses else 0.0), compute

    def _measured(self, chunk: int):
        """Around the first forward after ``measure`` was set: count what it saves for backward."""
        if not self.measure:
            return contextlib.nullcontext()
        self.measure, self.activation_chunk = False, chunk
        from ..model.recompute import saved_bytes

        @contextlib.contextmanager
        def counting():
            with saved_bytes(self.stage.parameters()) as total:
                yield
            self.activation_bytes = total[0]
        return counting()

    def tie_gradients(self) -> None:
        """Sum the tied embedding's gradient between the first and the last stage (p > 1)."""
        if self.size == 1 or self.stage.tied is None:
            return
        partner = self.size - 1 if self.stage.first else 0
        grad = self.stage.tied.grad
        mine = _to_host(grad)
        theirs = np.empty_like(mine)
        self.comm.Sendrecv(mine.copy(), dest=partner, sendtag=TAG_TIE, recvbuf=theirs, source=partner, recvtag=TAG_TIE)
        grad += torch.from_numpy(theirs).to(grad.device).view_as(grad)

    @torch.no_grad()
    def forward_only(self, x, y, shape, autocast) -> float:
        """Validation loss of one batch through the pipeline; every stage returns the last stage's value."""
        loss, sends = 0.0, []
        for c, chunk in enumerate(self.stage.chunks):
            prev, prev_c, nxt, nxt_c = self._neighbours(c)
            inp = x.to(self.device) if chunk.first else self._recv(shape, prev, self._tag(0, self.rank, c, 0, 1))
            with autocast():
                out = chunk(inp)
            if chunk.last:
                loss = float(chunk.loss(out, y.to(self.device)))
            else:
                self._send(out, nxt, self._tag(0, nxt, nxt_c, 0, 1), sends)
        MPI.Request.Waitall([r for r, _ in sends])
        return self.comm.bcast(loss, root=self.size - 1) if self.size > 1 else loss
