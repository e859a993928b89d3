"""One training step, for every layout, through the parts ``parallelize`` (parallelize.py) built:

    step:   sync.zero_grad(); pipeline.run(micro_batches); sync.finish(tie)
            unscale (fp16); clip by the global norm over every model-parallel rank; update.step

``Trainer(cfg, comm, batches)`` cuts ``comm`` into the run's ``Mesh`` and builds the parts; ``train_step(step)``
runs one step and returns its ``StepRecord``; ``evaluate()`` gives the
validation loss; ``save(out, step)`` writes the full model and optimizer
state (trainer_state.py, checkpoint.py) from rank 0. The same seed and global batch give the same training
whatever the layout, up to floating-point summation order
(tests/test_train_equivalence.py, tests/test_layouts.py).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from mpi4py import MPI

from ..services import checkpoint
from ..config import TrainConfig
from ..faults import step_check
from ..services.metrics import StepRecord, Timeline
from .parallelize import Mesh, parallelize
from .utilization import formula_mib
from ..services.watchdog import NoWatchdog
from ..parallel.expert_parallel import reset_routing, routing_summary
from ..parallel.optim import clip_coefficient
from ..parallel.schedules import bubble_formula
from ..parallel.tensor_parallel_sharding import is_sharded
from .trainer_state import CheckpointedState


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay; a function of the step alone (so resuming is exact)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.decay_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / cfg.decay_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


class Trainer(CheckpointedState):
    aligned = True  # every rank ends a step at the same point: the loop may evaluate and checkpoint between steps

    def __init__(self, cfg: TrainConfig, comm, batches, state: dict | None = None, timeline: Timeline | None = None,
                 sync_grads: bool = True, slow_factor: float = 1.0, netem=None):
        """``comm``: the ranks of this layout (cut into the dp x tp x pp grid of ``cfg``).
        ``sync_grads=False``: no gradient averaging here (a parameter-server worker, dp x 1 x 1).
        ``slow_factor``: --straggler, compute takes this many times longer on this rank.
        ``netem``: a Network (--netem) whose speed every gradient message takes (comm/netem.py)."""
        self.cfg, self.comm, self.batches, self.timeline, self.slow_factor = cfg, comm, batches, timeline, slow_factor
        self.mesh = Mesh.build(cfg, comm)
        grid = self.grid = self.mesh.grid
        self.tp_comm, self.replica_comm, self.pp_comm = self.mesh.tp, self.mesh.replicas, self.mesh.pp
        data = grid.dp  # the ways the batch is cut: a context-parallel group shares its rows
        self.sizes = cfg.micro_rows(data, grid.dp_rank)  # rows of each micro-batch of this rank
        self.lo, self.rows = cfg.rows_of(data, grid.dp_rank)
        self.micro, self.n_micro = max(self.sizes), len(self.sizes)
        # a global batch that does not divide over dp: each micro-batch's loss weighted by its rows (rows x dp / B),
        # so that averaging over the ranks gives the mean over the batch; None: equal shares (1/m, as always)
        even = cfg.global_batch_size % data == 0 and len(set(self.sizes)) == 1
        self.weights = None if even else [n * data / cfg.global_batch_size for n in self.sizes]
        # this rank's weight in a loss's mean over the dp x cp replicas (a cp group's ranks each hold 1/cp of the tokens)
        self.share = self.rows * data / cfg.global_batch_size / grid.replicas
        self.device = torch.device(cfg.device)
        parts = parallelize(cfg, self.mesh, state, timeline, sync_grads, netem)
        self.model, self.stage, self.pipeline, self.sync, self.update = \
            parts.model, parts.stage, parts.pipeline, parts.sync, parts.update
        self.params, self.names, self.clock, self.tp, self.context, self.experts, self.scaler = \
            parts.params, parts.names, parts.clock, parts.tp, parts.context, parts.experts, parts.scaler
        self.n_params, self.flops_per_token = parts.n_params, parts.flops_per_token
        self.start_step = int(state["step"]) if state is not None else 0
        self.completed = self.start_step  # steps whose optimizer update this rank has applied
        self.formula_mib = None  # utilization.formula_mib, computed at the first record
        self.norm_comms = self.update.norm_comms + (self.pp_comm, self.tp_comm)  # where the gradient's squares lie
        self.counted_elsewhere = self._counted_elsewhere()
        self.loss_counted = self.stage.last and grid.tp_rank == 0  # each replica's loss once in a step's mean
        self.bubble_formula = bubble_formula(grid.pp, self.n_micro, cfg.virtual_stages) if grid.pp > 1 else None
        self.fault_check = step_check()  # None unless PARALLEL_LM_FAIL_AT planned a fault
        self.pipeline.measure = True  # the first micro-batch's activation bytes (utilization.activation_line)
        if self.scaler:  # an overflowing step sums inf and -inf into nan on purpose (the scaler skips it): no warning
            np.seterr(invalid="ignore")
        self.watchdog = NoWatchdog()  # train.py sets a Watchdog (--timeout): progress marks below
        if state is not None:  # this rank's piece of the optimizer state, and the loss scaler's
            self._restore(state, checkpoint.optimizer_by_name(state["optimizer"], self.model))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(micro, T, C): the activations passed between pipeline stages (T/tp tokens under sequence parallelism)."""
        tokens = self.cfg.model.block_size // (self.grid.tp if self.cfg.sequence_parallel else 1) // self.cfg.cp
        return self.micro, tokens, self.cfg.model.n_embd

    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16)

    def _micro_batches(self, step: int):
        starts = [self.lo + sum(self.sizes[:i]) for i in range(self.n_micro + 1)]
        return [self._mine(*self.batches.rows(step, "train", self.cfg.global_batch_size, a, b))
                for a, b in zip(starts, starts[1:])]

    def _mine(self, x, y):
        """This rank's tokens of the rows (x, y): all of them, or under --cp its context-parallel share."""
        return (x, y) if self.context is None else (self.context.local(x), self.context.local(y))

    def _tied_copy(self) -> list:
        """[the tied embedding weight] on the last stage of a pipeline, whose first stage holds the same values."""
        return [self.stage.tied] if self.stage.tied is not None and not self.stage.first else []

    def _counted_elsewhere(self) -> list:
        """Parameters whose gradient another rank counts in the global norm: the tied weight's copy on the
        last stage, and replicated (not tensor-sharded) parameters on all but tensor-parallel rank 0."""
        skip = self._tied_copy()
        if self.grid.tp_rank > 0:
            skip += [p for p in self.params if not is_sharded(self.names[id(p)])]
        return skip

    def _squares(self) -> float:
        """This rank's share of the squared global gradient norm (summed over ``norm_comms`` by the caller)."""
        if not self.experts:
            return self.update.squares(self.counted_elsewhere)
        return self.update.squares(self.counted_elsewhere + self.experts.params) + self.experts.squares()

    def _forward_backward(self, step: int, scale: float) -> tuple[float, float, float]:
        """This rank's micro-batches through the pipeline: (loss on the last stage, compute_s, pipeline_s)."""
        if self.fault_check:
            self.fault_check(step)
        t0 = time.perf_counter()
        loss, compute_s = self.pipeline.run(self._micro_batches(step), self.shape, self.autocast, scale, self.sync,
                                            self.weights)
        if self.slow_factor > 1:  # --straggler: this rank is slow_factor times slower at computing
            time.sleep((self.slow_factor - 1) * compute_s)
            compute_s *= self.slow_factor
        return loss, compute_s, time.perf_counter() - t0

    def local_gradient(self, step: int) -> float:
        """Gradients of this rank's share of step's batch in .grad, no communication; returns its mean loss.

        fp16: an overflow halves this rank's loss scale and computes the gradient again, so what
        leaves (a parameter-server push) is always finite and no step is lost.
        """
        while True:
            self.sync.zero_grad()
            loss = self._forward_backward(step, self.scaler.scale if self.scaler else 1.0)[0]
            if self.scaler is None or self.scaler.unscale_or_skip(self.update.grads(), MPI.COMM_SELF):
                return loss
            if self.scaler.scale < 1:
                raise FloatingPointError(f"step {step}: fp16 gradients are not finite at any loss scale; "
                                         "use --precision bf16 or a lower --lr")

    def _tie(self):
        with self.clock.timing("tie"):
            self.pipeline.tie_gradients()

    def train_step(self, step: int) -> StepRecord:
        cfg, t_step = self.cfg, time.perf_counter()
        self.watchdog.at(step, "forward/backward")
        self.sync.zero_grad()
        if self.experts:
            self.experts.zero_grad()
        if cfg.model.n_experts:
            reset_routing(self.model)
        self.clock.start()
        loss, compute_s, pipe_s = self._forward_backward(step, self.scaler.scale if self.scaler else 1.0)
        self.watchdog.at(step, "gradient sync")
        comm_s, exposed_s = self.sync.finish(self._tie if self.grid.pp > 1 else None)
        if self.experts:  # the experts' gradients: summed over the ranks holding the same experts, over dp
            expert_s = self.experts.finish_gradients()
            comm_s, exposed_s = (None, None) if comm_s is None else (comm_s + expert_s, exposed_s + expert_s)
        self.watchdog.at(step, "optimizer step")
        t_opt = time.perf_counter()
        applied = self.scaler.unscale_or_skip(self.update.grads(), self.comm) if self.scaler else True
        if applied:
            coef = clip_coefficient(self._squares(), cfg.grad_clip, self.norm_comms) if cfg.grad_clip > 0 else 1.0
            gather_s = self.update.step(lr_at(cfg, step), coef)  # ZeRO: the all-gather of the updated shards
            if comm_s is not None:
                tie_s = self.clock.seconds("tie")
                comm_s, exposed_s = comm_s + gather_s + tie_s, exposed_s + gather_s + tie_s
        self.completed = step + 1  # before the loss's all-reduce: a failure there leaves this step done
        if self.timeline:
            self.timeline.add("optimizer", t_opt, time.perf_counter() - t_opt)
        return self._record(step, t_step, loss, compute_s, pipe_s, comm_s, exposed_s, applied)

    def _record(self, step, t_step, loss, compute_s, pipe_s, comm_s, exposed_s, applied) -> StepRecord:
        cfg, grid = self.cfg, self.grid
        total = np.array([loss * self.share if self.loss_counted else 0.0])
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        bubble = None
        if grid.pp > 1:  # the time in the pipeline not spent computing, mean over the ranks
            bubble = float(np.mean(self.comm.allgather(max(0.0, 1 - compute_s / pipe_s))))
        step_s = time.perf_counter() - t_step
        if comm_s is not None:  # the main thread's wait also holds the hand-off to and from the communication
            exposed_s = min(exposed_s, comm_s)  # thread (up to ~90 us seen); the part of comm exposed is at most all
        tokens = cfg.global_batch_size * cfg.model.block_size
        return StepRecord(step=step + 1, loss=float(total[0]), lr=lr_at(cfg, step), tokens=tokens,
                          step_s=step_s, compute_s=compute_s, comm_s=comm_s, exposed_comm_s=exposed_s,
                          tokens_per_s=tokens / step_s,
                          tp_comm_s=self.clock.seconds("tp") if grid.tp > 1 else None, bubble=bubble,
                          cp_wait_s=self.clock.seconds("cp") if self.context else None,
                          ep_comm_s=self.clock.seconds("ep") if self.experts else None,
                          bubble_formula=self.bubble_formula,
                          loss_scale=self.scaler.scale if self.scaler else None,
                          experts=routing_summary(self.model, self.replica_comm) if cfg.model.n_experts else None,
                          skipped=(not applied) if self.scaler else None,
                          memory_mib=self._held_mib(), memory_formula_mib=self._formula_mib())

    def _held_mib(self) -> float:
        """MiB this rank holds now: model state (``memory``: parameters, gradients, optimizer state, and what is in
        flight: a ZeRO-2 bucket, ZeRO-3's whole layers) and the activations of the micro-batches its schedule
        holds at once (the first step measured one micro-batch's)."""
        held = sum(self.memory().values())
        if self.pipeline.activation_bytes:
            held += self.pipeline.peak_in_flight(self.n_micro) * self.pipeline.activation_bytes
        return held / 2**20

    def _formula_mib(self) -> float:
        """utilization.formula_mib, once: the formulas do not change from step to step."""
        if self.formula_mib is None:
            self.formula_mib = formula_mib(self)
        return self.formula_mib

    def evaluate(self) -> float:
        """Mean validation loss (nats per byte) over ``eval_batches`` fixed global batches, sharded over dp ranks."""
        total = 0.0
        lo, hi = self.lo, self.lo + self.rows
        self.stage.eval()
        for i in range(self.cfg.eval_batches):
            x, y = self._mine(*self.batches.rows(i, "val", self.cfg.global_batch_size, lo, hi))
            total += self.pipeline.forward_only(x, y, (self.rows,) + self.shape[1:], self.autocast)
        self.stage.train()
        mean = np.array([total / self.cfg.eval_batches * self.share])
        self.replica_comm.Allreduce(MPI.IN_PLACE, mean, op=MPI.SUM)
        return float(mean[0])

    def memory(self) -> dict:
        """Bytes of parameters, gradients and optimizer state this rank holds (after a step)."""
        return self.update.memory()

    def close(self):
        self.sync.close()

    def finish(self) -> list[str]:
        """After the last step: nothing left to gather (every rank holds its part); no line to add."""
        return []

    def recover(self, survivors, error, last_record, make):
        """--on-failure shrink (services/shrink.py): go on in place, or from the checkpoint."""
        return survivors.recover(self, error, last_record, make)

    def communicators(self) -> list:
        """Every communicator this trainer (and its threads) may be blocked in: what a failure revokes."""
        found = [*self.mesh.communicators(), getattr(self.sync, "thread_comm", None),
                 *((self.experts.comm, self.experts.replicas) if self.experts else ()),
                 getattr(self.watchdog, "comm", None)]
        unique = {id(c): c for c in found if c is not None and c != MPI.COMM_SELF}
        return list(unique.values())

    def abandon(self) -> None:
        """Stop this trainer's threads without any collective call (its communicators are revoked)."""
        self.watchdog.close(wait=False)
        self.sync.abandon()


@torch.no_grad()
def validation_loss(model, batches, cfg: TrainConfig, lo: int, hi: int, autocast=contextlib.nullcontext) -> float:
    """Mean loss over rows lo..hi of the ``eval_batches`` fixed validation batches (a plain GPT)."""
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
