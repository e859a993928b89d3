"""Pipeline parallelism: the layers cut into stages, activations passed along with Send/Recv.

Stage s of p holds layers [s L/p, (s+1) L/p); the first also the
embeddings, the last the final LayerNorm and the head. A batch is cut
into m micro-batches; stage s receives micro-batch i's activations
(micro, T, C) from stage s-1, runs its layers, and sends the result to
stage s+1; in backward the gradient with respect to those activations
travels the other way. Sends are ``Isend`` (never blocking), receives are
blocking ``Recv``; the schedules below never wait in a cycle.

Schedules (``schedule(kind, m, stage, p)``):
- GPipe (Huang et al. 2019): all m forwards, then all m backwards. Stage s
  idles while the first micro-batch reaches it and while the last
  gradient comes back: the *bubble*, (p-1)/(m+p-1) of the step when every
  micro-batch costs the same on every stage. It also holds all m
  micro-batches' activations at once.
- 1F1B (PipeDream-Flush, Narayanan et al. 2021): p-s-1 warm-up forwards,
  then one forward and one backward in turn, then the remaining
  backwards. Same bubble, but at most p-s micro-batches' activations live
  at once.

The head shares its weight with the token embedding (tied); with p > 1
the first and the last stage each hold a copy, and their gradients are
summed between them (``tie_gradients``), as Megatron-LM does.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

TAG_ACTIVATION, TAG_GRADIENT, TAG_TIE = 31, 32, 33


def schedule(kind: str, m: int, stage: int, stages: int) -> list[tuple[str, int]]:
    """The ("F" | "B", micro-batch) sequence stage ``stage`` runs."""
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind != "1f1b":
        raise ValueError(f"unknown pipeline schedule {kind!r}; valid: gpipe, 1f1b")
    warm = min(stages - stage - 1, m)
    ops = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", i) for i in range(m - warm, m)]


def bubble_formula(stages: int, m: int) -> float:
    """(p-1)/(m+p-1): the idle fraction of a GPipe or 1F1B step with equal micro-batch costs."""
    return (stages - 1) / (m + stages - 1)


class Stage(nn.Module):
    """This stage's layers of a full ``GPT`` (the same module objects, so names and values match it).

    ``sharded``: the model's layers are tensor-parallel (``tensor_parallel.shard_model``),
    so the loss is computed over vocabulary slices. pp = 1 is one stage holding everything.
    """

    def __init__(self, model, stage: int, stages: int, sharded: bool = False):
        super().__init__()
        per = model.cfg.n_layer // stages
        self.first, self.last, self.sharded = stage == 0, stage == stages - 1, sharded
        self.lo = stage * per
        self.blocks = nn.ModuleList(model.blocks[self.lo: self.lo + per])
        if self.first:
            self.tok_emb, self.pos_emb = model.tok_emb, model.pos_emb
        if self.last:
            self.ln_f, self.head = model.ln_f, model.head
        self.tied = model.tok_emb.weight if (self.first or self.last) else None
        self.prefixes = [f"blocks.{self.lo + i}." for i in range(per)] + \
            (["tok_emb.", "pos_emb."] if self.first else []) + (["ln_f.", "head."] if self.last else [])

    def forward(self, x):
        """Token ids (first stage) or activations (B, T, C) in; activations or logits out."""
        if self.first:
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.tok_emb(x) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)) if self.last else x

    def loss(self, logits, targets):
        """Mean cross-entropy; over vocabulary slices when the head is tensor-parallel."""
        if self.sharded:
            from .tensor_parallel import vocab_parallel_ce
            return vocab_parallel_ce(logits, targets, self.head)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def owns(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.prefixes)


def _to_host(t: torch.Tensor) -> np.ndarray:
    """fp32, contiguous, in host memory: what travels between stages."""
    return t.detach().float().contiguous().cpu().numpy()


class Pipeline:
    """Runs one step's micro-batches through this rank's stage over ``comm`` (the pipeline group).

    ``forward``: the module to call for the stage (the stage itself, or a
    wrapper around it such as torch DDP); ``device``: where the stage lives.
    """

    def __init__(self, stage: Stage, comm, kind: str, timeline=None, forward=None, device=None):
        self.stage, self.comm, self.kind, self.timeline = stage, comm, kind, timeline
        self.forward = forward or stage
        self.device = device or torch.device("cpu")
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def _span(self, name):
        return self.timeline.span(name) if self.timeline else contextlib.nullcontext()

    def _recv(self, shape, source, tag) -> torch.Tensor:
        buf = np.empty(shape, dtype=np.float32)
        self.comm.Recv(buf, source=source, tag=tag)
        return torch.from_numpy(buf).to(self.device)

    def run(self, micro_batches, shape, autocast, scale: float, sync) -> tuple[float, float]:
        """Forward and backward every micro-batch ((x, y) pairs) per the schedule; gradients accumulate.

        ``shape``: (micro, T, C) of the activations between stages. ``scale``:
        the loss is multiplied by it before backward (fp16 loss scaling).
        ``sync``: the gradient synchronization (``grad_sync``), told which
        micro-batch is the last, so it communicates only after that one.
        Returns (mean loss on the last stage, else 0.0; seconds spent computing).
        """
        m = len(micro_batches)
        inputs, outputs, losses, sends = {}, {}, [], []
        compute = 0.0
        for op, i in schedule(self.kind, m, self.rank, self.size):
            x, y = micro_batches[i]
            last = i == m - 1
            if op == "F":
                inp = x.to(self.device) if self.stage.first else \
                    self._recv(shape, self.rank - 1, TAG_ACTIVATION).requires_grad_()
                t0 = time.perf_counter()
                with self._span(f"forward {i}"), autocast(), sync.forward_context(last):
                    out = self.forward(inp)
                    if self.stage.last:
                        out = self.stage.loss(out, y.to(self.device))
                compute += time.perf_counter() - t0
                if self.stage.last:
                    losses.append(float(out.detach()))
                    out = out * (scale / m)
                else:
                    act = _to_host(out)
                    sends.append((self.comm.Isend(act, dest=self.rank + 1, tag=TAG_ACTIVATION), act))
                inputs[i], outputs[i] = inp, out
            else:
                inp, out = inputs.pop(i), outputs.pop(i)
                grad = None if self.stage.last else self._recv(shape, self.rank + 1, TAG_GRADIENT)
                sync.begin_backward(last)
                t0 = time.perf_counter()
                with self._span(f"backward {i}"):
                    out.backward(grad)
                compute += time.perf_counter() - t0
                if not self.stage.first:
                    g = _to_host(inp.grad)
                    sends.append((self.comm.Isend(g, dest=self.rank - 1, tag=TAG_GRADIENT), g))
        MPI.Request.Waitall([r for r, _ in sends])
        return (sum(losses) / m if losses else 0.0), compute

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
        inp = x.to(self.device) if self.stage.first else self._recv(shape, self.rank - 1, TAG_ACTIVATION)
        with autocast():
            out = self.stage(inp)
        loss = 0.0
        if self.stage.last:
            loss = float(self.stage.loss(out, y.to(self.device)))
        else:
            self.comm.Send(_to_host(out), dest=self.rank + 1, tag=TAG_ACTIVATION)
        return self.comm.bcast(loss, root=self.size - 1) if self.size > 1 else loss
