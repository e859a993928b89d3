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
    """This stage's layers of a full ``GPT`` (the same module objects, so names and values match it)."""

    def __init__(self, model, stage: int, stages: int):
        super().__init__()
        per = model.cfg.n_layer // stages
        self.first, self.last = stage == 0, stage == stages - 1
        self.lo = stage * per
        self.blocks = nn.ModuleList(model.blocks[self.lo: self.lo + per])
        if self.first:
            self.tok_emb, self.pos_emb = model.tok_emb, model.pos_emb
        if self.last:
            self.ln_f, self.head = model.ln_f, model.head
        self.tied = model.tok_emb.weight if (self.first or self.last) else None
        self.tp_comm = getattr(model, "tp_comm", None)  # set by model.tensor_parallel.shard_model
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
        if self.tp_comm is not None:
            from ..model.tensor_parallel import vocab_parallel_ce
            return vocab_parallel_ce(logits, targets, self.head)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def owns(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.prefixes)


class Pipeline:
    """Runs one step's micro-batches through this rank's stage over ``comm`` (the pipeline group)."""

    def __init__(self, stage: Stage, comm, kind: str, timeline=None):
        self.stage, self.comm, self.kind, self.timeline = stage, comm, kind, timeline
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def _span(self, name):
        return self.timeline.span(name) if self.timeline else contextlib.nullcontext()

    def run(self, micro_batches, shape, autocast) -> tuple[float, float]:
        """Forward and backward every micro-batch ((x, y) pairs) per the schedule; gradients accumulate.

        ``shape``: (micro, T, C) of the activations between stages. Returns
        (mean loss on the last stage, else 0.0; seconds spent computing).
        """
        m = len(micro_batches)
        inputs, outputs, losses, sends = {}, {}, [], []
        compute = 0.0
        for op, i in schedule(self.kind, m, self.rank, self.size):
            x, y = micro_batches[i]
            if op == "F":
                if self.stage.first:
                    inp = x
                else:
                    buf = np.empty(shape, dtype=np.float32)
                    self.comm.Recv(buf, source=self.rank - 1, tag=TAG_ACTIVATION)
                    inp = torch.from_numpy(buf).requires_grad_()
                t0 = time.perf_counter()
                with self._span(f"forward {i}"), autocast():
                    out = self.stage(inp)
                    if self.stage.last:
                        out = self.stage.loss(out, y) / m
                compute += time.perf_counter() - t0
                if self.stage.last:
                    losses.append(float(out.detach()) * m)
                else:
                    act = out.detach().float().contiguous().numpy()
                    sends.append((self.comm.Isend(act, dest=self.rank + 1, tag=TAG_ACTIVATION), act))
                inputs[i], outputs[i] = inp, out
            else:
                inp, out = inputs.pop(i), outputs.pop(i)
                grad = None
                if not self.stage.last:
                    buf = np.empty(shape, dtype=np.float32)
                    self.comm.Recv(buf, source=self.rank + 1, tag=TAG_GRADIENT)
                    grad = torch.from_numpy(buf)
                t0 = time.perf_counter()
                with self._span(f"backward {i}"):
                    out.backward(grad)
                compute += time.perf_counter() - t0
                if not self.stage.first:
                    g = inp.grad.contiguous().numpy()
                    sends.append((self.comm.Isend(g, dest=self.rank - 1, tag=TAG_GRADIENT), g))
        MPI.Request.Waitall([r for r, _ in sends])
        return (sum(losses) / m if losses else 0.0), compute

    def tie_gradients(self) -> None:
        """Sum the tied embedding's gradient between the first and the last stage (p > 1)."""
        if self.size == 1 or self.stage.tied is None:
            return
        partner = self.size - 1 if self.stage.first else 0
        mine = self.stage.tied.grad.contiguous().view(-1).numpy()
        theirs = np.empty_like(mine)
        self.comm.Sendrecv(mine.copy(), dest=partner, sendtag=TAG_TIE, recvbuf=theirs, source=partner, recvtag=TAG_TIE)
        mine += theirs

    @torch.no_grad()
    def forward_only(self, x, y, shape, autocast) -> float:
        """Validation loss of one batch through the pipeline; every stage returns the last stage's value."""
        if self.stage.first:
            inp = x
        else:
            inp = torch.from_numpy(np.empty(shape, dtype=np.float32))
            self.comm.Recv(inp.numpy(), source=self.rank - 1, tag=TAG_ACTIVATION)
        with autocast():
            out = self.stage(inp)
        loss = 0.0
        if self.stage.last:
            loss = float(self.stage.loss(out, y))
        else:
            self.comm.Send(out.float().contiguous().numpy(), dest=self.rank + 1, tag=TAG_ACTIVATION)
        return self.comm.bcast(loss, root=self.size - 1)
