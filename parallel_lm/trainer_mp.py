"""Training with model parallelism: a dp x tp x pp grid (parallel/grid.py) instead of plain data parallelism.

Every rank builds the full model from the same seed (identical weights),
keeps its pipeline stage (``parallel/pipeline.py``), runs the step's
micro-batches through the pipeline, averages its stage's gradients over
its data-parallel group, sums the tied embedding's gradient between the
first and last stage, clips by the norm over the whole model, and steps
(AdamW on the stage, or ZeRO-1 sharded over the data-parallel group).
The interface is ``Trainer``'s: train_step, evaluate, full_state_dict,
memory, close.
"""
from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import torch
from mpi4py import MPI

from .comm import allreduce_mean
from .comm.buffers import as_array
from .config import TrainConfig
from .model import GPT, tensor_parallel
from .model.tensor_parallel import gather_state_dict, shard_model
from .parallel.optim import clip_coefficient
from .parallel.pipeline import Pipeline, Stage, bubble_formula
from .trainer import _maybe_fail, held_bytes, lr_at, make_optimizer


class ModelParallelTrainer:
    def __init__(self, cfg: TrainConfig, comm, batches, state: dict | None = None, timeline=None):
        self.cfg, self.batches, self.timeline = cfg, batches, timeline
        self.grid = cfg.grid(comm.Get_size(), comm.Get_rank())
        self.tp_comm, self.dp_comm, self.pp_comm = self.grid.split(comm)
        self.world_comm = comm
        self.rows, self.micro, self.n_micro = cfg.per_rank(self.grid.dp)
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.model)  # the full model, as one process would build it: counted and described
        self.start_step = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            torch.set_rng_state(state["torch_rng"])
            self.start_step = int(state["step"])
        # this rank's copy, its layers split over the tensor-parallel group (the same object when tp = 1)
        self.local = shard_model(copy.deepcopy(self.model), self.tp_comm, cfg.allreduce) if self.grid.tp > 1 \
            else self.model
        self.stage = Stage(self.local, self.grid.pp_rank, self.grid.pp)
        self.pipeline = Pipeline(self.stage, self.pp_comm, cfg.schedule, timeline)
        self.params = [p for p in self.stage.parameters() if p.requires_grad]
        self.scaler = self.dp = self.ddp = None
        self.zero = None
        if cfg.zero:
            from .parallel.zero import Zero
            self.zero = Zero(self.stage, self.dp_comm, cfg.zero, cfg.optimizer, cfg.lr, cfg.weight_decay,
                             cfg.bucket_mb, cfg.allreduce, timeline)
            self.optimizer = None
        else:
            self.optimizer = make_optimizer(self.stage, cfg)
        self.shape = (self.micro, cfg.model.block_size, cfg.model.n_embd)

    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def _micro_batches(self, step: int, split: str = "train"):
        lo = self.grid.dp_rank * self.rows
        return [self.batches.rows(step, split, self.cfg.global_batch_size, lo + i * self.micro, lo + (i + 1) * self.micro)
                for i in range(self.n_micro)]

    def _average_over_dp(self) -> float:
        """Mean of this stage's gradients over its data-parallel replicas, as one flat all-reduce."""
        if self.grid.dp == 1:
            return 0.0
        t0 = time.perf_counter()
        flat = torch.cat([p.grad.reshape(-1) for p in self.params])
        allreduce_mean(as_array(flat), self.dp_comm, self.cfg.allreduce)
        offset = 0
        for p in self.params:
            p.grad.copy_(flat[offset: offset + p.numel()].view_as(p))
            offset += p.numel()
        return time.perf_counter() - t0

    def _not_counted(self) -> list:
        """Parameters whose gradient another rank counts in the global norm: the tied weight's copy on the
        last stage, and replicated (not tensor-sharded) parameters on all but tensor-parallel rank 0."""
        skip = [self.stage.tied] if self.stage.tied is not None and not self.stage.first else []
        if self.grid.tp_rank > 0:
            skip += [p for p in self.params if not getattr(p, "tp_sharded", False)]
        return skip

    def _clip(self) -> None:
        """Clip by the norm of the whole model's gradient, every element counted once."""
        skip = {id(p) for p in self._not_counted()}
        sq = sum(float(torch.sum(p.grad.double() ** 2)) for p in self.params if id(p) not in skip)
        coef = clip_coefficient(sq, self.cfg.grad_clip, (self.pp_comm, self.tp_comm))
        if coef < 1:
            for p in self.params:
                p.grad.mul_(coef)

    def train_step(self, step: int) -> dict:
        cfg, t_step = self.cfg, time.perf_counter()
        _maybe_fail(step)
        if self.zero:
            self.zero.zero_grad()
        else:
            for p in self.params:
                p.grad = None
        tp_before = tensor_parallel.SECONDS[0]
        loss, compute_s = self.pipeline.run(self._micro_batches(step), self.shape, self.autocast)
        tp_comm_s = tensor_parallel.SECONDS[0] - tp_before  # inside forward and backward, part of compute_s
        pipe_s = time.perf_counter() - t_step
        for p in self.params:  # a stage may not touch a parameter in a step (it always does here, but be safe)
            if p.grad is None and not self.zero:
                p.grad = torch.zeros_like(p)
        t_comm = time.perf_counter()
        self.pipeline.tie_gradients()
        comm_s = time.perf_counter() - t_comm
        if self.zero:
            comm_s += self.zero.reduce_gradients()
            t_opt = time.perf_counter()
            comm_s += self.zero.step(lr_at(cfg, step), cfg.grad_clip, norm_comms=(self.pp_comm, self.tp_comm),
                                     skip_in_norm=self._not_counted())
        else:
            comm_s += self._average_over_dp()
            t_opt = time.perf_counter()
            if cfg.grad_clip > 0:
                self._clip()
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            self.optimizer.step()
        # the bubble: time in the pipeline not spent computing, on this stage
        bubbles = self.world_comm.allgather(max(0.0, 1 - compute_s / pipe_s))
        losses = np.array([loss if self.stage.last else 0.0])
        self.world_comm.Allreduce(MPI.IN_PLACE, losses, op=MPI.SUM)
        step_s = time.perf_counter() - t_step
        tokens = cfg.global_batch_size * cfg.model.block_size
        if self.timeline:
            self.timeline.add("optimizer", t_opt, time.perf_counter() - t_opt)
        return {"step": step + 1, "loss": float(losses[0]) / (self.grid.dp * self.grid.tp), "lr": lr_at(cfg, step),
                "tokens": tokens, "step_s": step_s, "compute_s": compute_s, "comm_s": comm_s, "exposed_comm_s": comm_s,
                "tokens_per_s": tokens / step_s, "tp_comm_s": tp_comm_s,
                "bubble": float(np.mean(bubbles)) if self.grid.pp > 1 else None,
                "bubble_formula": bubble_formula(self.grid.pp, self.n_micro) if self.grid.pp > 1 else None}

    def evaluate(self) -> float:
        total = 0.0
        self.stage.eval()
        for i in range(self.cfg.eval_batches):
            x, y = self.batches.rows(i, "val", self.cfg.global_batch_size, self.grid.dp_rank * self.rows,
                                     (self.grid.dp_rank + 1) * self.rows)
            total += self.pipeline.forward_only(x, y, (self.rows,) + self.shape[1:], self.autocast)
        self.stage.train()
        mean = np.array([total / self.cfg.eval_batches])
        self.dp_comm.Allreduce(MPI.IN_PLACE, mean, op=MPI.SUM)
        return float(mean[0]) / self.grid.dp

    def full_state_dict(self) -> dict | None:
        """The whole model's state_dict on world rank 0 (keys as single-process training); None elsewhere.

        Collective: every rank must call it. Stages of the first data-parallel
        replica send their parts along the pipeline group to rank 0.
        """
        mine = {k: v for k, v in self.local.state_dict().items() if self.stage.owns(k)}
        if self.grid.tp > 1:
            mine = gather_state_dict(mine, self.tp_comm)  # whole layers on tensor-parallel rank 0
        parts = self.pp_comm.gather(mine if self.grid.dp_rank == 0 and self.grid.tp_rank == 0 else None, root=0)
        if self.world_comm.Get_rank() != 0:
            return None
        full = {}
        for part in parts:
            full.update({k: v.detach().clone() for k, v in part.items()})
        return {k: full[k] for k in self.model.state_dict()}

    def memory(self) -> dict:
        """Bytes of this rank's parameters (its stage, its tensor slice), gradients and optimizer state."""
        return held_bytes(self.params, self.optimizer, self.zero)

    def close(self) -> None:
        pass
