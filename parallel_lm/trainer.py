"""The training loop: one optimizer step = forward/backward on this rank's micro-batches,
gradient averaging (explicit buckets, naive per-parameter, or torch DDP), clipping, AdamW.

``Trainer(cfg, comm, batches)`` builds everything; ``train_step(step)`` runs
one step and returns its metrics; ``evaluate()`` gives the validation loss.
The same seed and global batch give the same training whatever the rank
count, up to floating-point summation order (tests/test_train_equivalence.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np
import torch
from mpi4py import MPI

from .config import TrainConfig
from .metrics import Timeline
from .model import GPT
from .parallel.data_parallel import BucketedDataParallel, NaiveDataParallel
from .parallel.optim import build_optimizer, decay_groups


def _maybe_fail(step: int) -> None:
    """Test hook: PARALLEL_LM_FAIL_AT=RANK:STEP raises on that (world) rank at that step."""
    spec = os.environ.get("PARALLEL_LM_FAIL_AT")
    if spec and spec == f"{MPI.COMM_WORLD.Get_rank()}:{step}":
        raise RuntimeError(f"PARALLEL_LM_FAIL_AT={spec}: failing on purpose")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay; a function of the step alone (so resuming is exact)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.decay_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / cfg.decay_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model, cfg: TrainConfig):
    """The run's optimizer over ``model``'s parameters, with ``parallel/optim.py``'s decay groups."""
    return build_optimizer(decay_groups(model.parameters(), cfg.weight_decay), cfg.optimizer, cfg.lr)


def held_bytes(params, optimizer, zero=None) -> dict:
    """Bytes of ``params``, their gradients and ``optimizer``'s state tensors (ZeRO counts its own)."""
    if zero is not None:
        return zero.memory()
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return {"params": size(params), "grads": size(p.grad for p in params if p.grad is not None),
            "optimizer": size(state)}


class LossScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al. 2018): halve on overflow, double after a run of good steps."""

    def __init__(self, scale: float = 2.0**16, growth_interval: int = 1000):
        self.scale, self.growth_interval, self.good_steps = scale, growth_interval, 0

    def unscale_or_skip(self, params) -> bool:
        """Divide gradients by the scale; False (skip the step) if any is inf/nan.

        Gradients are identical on every rank after the all-reduce, so every
        rank takes the same decision without communicating.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            self.scale /= 2
            self.good_steps = 0
            return False
        for g in grads:
            g.div_(self.scale)
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= 2
        return True


class Trainer:
    def __init__(self, cfg: TrainConfig, comm, batches, state: dict | None = None, timeline: Timeline | None = None,
                 sync_grads: bool = True, slow_factor: float = 1.0):
        """``comm``: the data-parallel ranks (this rank's share of each global batch is its rank's rows).
        ``sync_grads=False``: no gradient averaging here (a parameter-server worker).
        ``slow_factor``: --straggler, compute takes this many times longer on this rank."""
        self.cfg, self.comm, self.batches, self.slow_factor = cfg, comm, batches, slow_factor
        self.world, self.rank = comm.Get_size(), comm.Get_rank()
        self.rows, self.micro, self.n_micro = cfg.per_rank(self.world)
        self.timeline = timeline
        torch.manual_seed(cfg.seed)  # same seed on every rank: identical initial weights
        self.device = torch.device(cfg.device)
        self.model = GPT(cfg.model).to(self.device)
        # under ZeRO each rank builds an optimizer for its shard only (parallel/zero.py)
        self.optimizer = make_optimizer(self.model, cfg) if not cfg.zero else None
        self.scaler = LossScaler() if cfg.precision == "fp16" else None
        self.start_step = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            if state["optimizer"] and self.optimizer:  # empty after a parameter server or ZeRO: start AdamW afresh
                self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            self.start_step = int(state["step"])
            if self.scaler and "loss_scale" in state:
                self.scaler.scale = float(state["loss_scale"])
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp = self.dp = self.zero = None  # none when a parameter server does the averaging (sync_grads=False)
        if sync_grads and cfg.zero:
            from .parallel.zero import Zero
            self.zero = Zero(self.model, comm, cfg.zero, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.bucket_mb,
                             cfg.allreduce, timeline)
        elif sync_grads and cfg.engine == "torch-ddp":
            from torch.nn.parallel import DistributedDataParallel

            from .parallel.torch_ddp import init_process_group
            init_process_group(comm, "nccl" if cfg.device == "cuda" else "gloo")
            self.ddp = DistributedDataParallel(self.model, bucket_cap_mb=cfg.bucket_mb)
        elif sync_grads and cfg.dp_sync == "naive":
            self.dp = NaiveDataParallel(self.params, comm, cfg.allreduce, timeline)
        elif sync_grads:
            self.dp = BucketedDataParallel(self.params, comm, cfg.allreduce, cfg.bucket_mb, cfg.overlap,
                                           cfg.comm_dtype, timeline)

    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16)

    def _span(self, name):
        return self.timeline.span(name) if self.timeline else contextlib.nullcontext()

    def _mean_over_ranks(self, values) -> np.ndarray:
        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf / self.world

    def _forward_backward(self, step: int, model, scale: float) -> tuple[float, float]:
        """Forward and backward over this rank's micro-batches of step's global batch.

        Returns (mean loss, compute seconds). Gradients accumulate in .grad; with
        a DP object attached, only the last micro-batch's backward communicates.
        """
        cfg, loss_sum, compute_s = self.cfg, 0.0, 0.0
        _maybe_fail(step)
        lo = self.rank * self.rows
        for m in range(self.n_micro):
            x, y = (t.to(self.device) for t in
                    self.batches.rows(step, "train", cfg.global_batch_size, lo + m * self.micro, lo + (m + 1) * self.micro))
            last = m == self.n_micro - 1
            t0 = time.perf_counter()
            if self.dp is not None:
                self.dp.begin_backward(sync=last)
            sync_ctx = self.ddp.no_sync() if (self.ddp and not last) else contextlib.nullcontext()
            with sync_ctx:
                with self._span("forward"), self.autocast():
                    _, loss = model(x, y)
                loss_sum += loss.item()
                with self._span("backward"):
                    (loss * (scale / self.n_micro)).backward()
            compute_s += time.perf_counter() - t0
        if self.slow_factor > 1:  # --straggler: this rank is slow_factor times slower at computing
            time.sleep((self.slow_factor - 1) * compute_s)
            compute_s *= self.slow_factor
        return loss_sum / self.n_micro, compute_s

    def local_gradient(self, step: int) -> float:
        """Gradients of this rank's share of step's batch in .grad, no communication; returns its mean loss."""
        self.model.zero_grad(set_to_none=True)
        return self._forward_backward(step, self.model, 1.0)[0]

    def _zero_step(self, step: int) -> tuple[float, float, float, float]:
        """(loss, compute_s, comm_s, optimizer start time) of a ZeRO step: reduce-scatter, shard update, all-gather."""
        self.zero.zero_grad()
        loss, compute_s = self._forward_backward(step, self.model, 1.0)
        comm_s = self.zero.reduce_gradients()
        t_opt = time.perf_counter()
        comm_s += self.zero.step(lr_at(self.cfg, step), self.cfg.grad_clip)
        return loss, compute_s, comm_s, t_opt

    def train_step(self, step: int) -> dict:
        cfg, t_step = self.cfg, time.perf_counter()
        model = self.ddp or self.model
        if self.zero:
            loss, compute_s, comm_s, t_opt = self._zero_step(step)
            return self._record(step, t_step, t_opt, loss, compute_s, comm_s, comm_s, True)
        if self.ddp:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.dp.zero_grad()
        loss, compute_s = self._forward_backward(step, model, self.scaler.scale if self.scaler else 1.0)
        if self.ddp:
            comm_s = exposed_s = None  # inside DDP's backward hooks: not separable here
        else:
            with self._span("wait for gradients"):
                comm_s, exposed_s = self.dp.finish()
        t_opt = time.perf_counter()
        applied = self.scaler.unscale_or_skip(self.params) if self.scaler else True
        if applied:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            lr = lr_at(cfg, step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        return self._record(step, t_step, t_opt, loss, compute_s, comm_s, exposed_s, applied)

    def _record(self, step, t_step, t_opt, loss, compute_s, comm_s, exposed_s, applied) -> dict:
        cfg = self.cfg
        if self.timeline:
            self.timeline.add("optimizer", t_opt, time.perf_counter() - t_opt)
        loss_mean = float(self._mean_over_ranks([loss])[0])
        step_s = time.perf_counter() - t_step
        tokens = cfg.global_batch_size * cfg.model.block_size
        record = {"step": step + 1, "loss": loss_mean, "lr": lr_at(cfg, step), "tokens": tokens,
                  "step_s": step_s, "compute_s": compute_s, "comm_s": comm_s, "exposed_comm_s": exposed_s,
                  "tokens_per_s": tokens / step_s}
        if self.scaler:
            record.update(loss_scale=self.scaler.scale, skipped=not applied)
        return record

    def close(self):
        if self.dp is not None:
            self.dp.close()

    def full_state_dict(self) -> dict:
        """The whole model's state_dict, keys as single-process training (every rank holds it here)."""
        return self.model.state_dict()

    def memory(self) -> dict:
        """Bytes of parameters, gradients and optimizer state this rank holds (after a step)."""
        return held_bytes(self.params, self.optimizer, self.zero)

    def evaluate(self) -> float:
        """Mean validation loss (nats per byte) over ``eval_batches`` fixed global batches, sharded over the ranks."""
        local = validation_loss(self.model, self.batches, self.cfg, self.rank * self.rows, (self.rank + 1) * self.rows,
                                self.autocast)
        return float(self._mean_over_ranks([local])[0])


@torch.no_grad()
def validation_loss(model, batches, cfg: TrainConfig, lo: int, hi: int, autocast=contextlib.nullcontext) -> float:
    """Mean loss over rows lo..hi of the ``eval_batches`` fixed validation batches."""
    device = next(model.parameters()).device
    total = 0.0
    model.eval()
    for i in range(cfg.eval_batches):
        x, y = (t.to(device) for t in batches.rows(i, "val", cfg.global_batch_size, lo, hi))
        with autocast():
            _, loss = model(x, y)
        total += float(loss)
    model.train()
    return total / cfg.eval_batches
