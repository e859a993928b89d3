"""The builder: a run's parts, composed in one visible sequence from its description and its mesh.

    mesh  = Mesh.build(cfg, comm)           # the named dimensions and the communicator of each
    parts = parallelize(cfg, mesh)          # context (its ring attention) -> model -> tensor -> experts
                                            #   -> stage -> gradient sync -> optimizer -> pipeline (-> loss scaler)

Every layout goes through the same sequence; a dimension of size 1 makes its step a no-op (one tensor rank
keeps whole layers, one stage holds every layer). ``Trainer`` (trainer.py) runs the parts' steps; nothing
else assembles them. Each part is handed the communicator it works over, and the clock its communication
time goes to (``StepClock``): no part reaches into another.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from mpi4py import MPI

from ..faults import in_collectives
from ..model import GPT
from ..parallel.choose_sync import make_grad_sync, make_optimizer
from ..parallel.context_parallel import ContextParallel
from ..parallel.expert_parallel import ExpertParallel
from ..parallel.grad_sync import GradSync
from ..parallel.grid import Grid
from ..parallel.optim import LossScaler
from ..parallel.pipeline import Pipeline, Stage
from ..parallel.stopwatch import StepClock
from ..parallel.tensor_parallel import shard_model
from ..parallel.tensor_parallel_comm import TensorParallel
from ..parallel.torch_ddp import TorchDDP
from ..runtime import emulated


@dataclass
class Mesh:
    """The layout's coordinates (``grid``: dp x cp x tp x pp, each meaning what it means in the cost model) and,
    for each named dimension, the communicator of the ranks this one works with along it. A dimension of size 1
    is ``COMM_SELF``; ``cp`` is None without context parallelism."""
    grid: Grid
    world: object
    replicas: object  # the dp x cp ranks holding this rank's shard (same tp and pp): gradients are averaged here
    tp: object
    pp: object
    cp: object = None  # the cp consecutive replicas that share one slice's sequences

    @classmethod
    def build(cls, cfg, comm) -> "Mesh":
        """Cut ``comm`` as ``cfg`` says (ValueError naming the fix when it does not fit). Collective."""
        grid = cfg.grid(comm.Get_size(), comm.Get_rank())
        if grid.tp == grid.pp == 1:
            tp, replicas, pp = MPI.COMM_SELF, comm, MPI.COMM_SELF
        else:
            tp, replicas, pp = grid.split(comm)
        cp = replicas.Split(color=grid.dp_rank, key=grid.cp_rank) if grid.cp > 1 else None
        return cls(grid, comm, replicas, tp, pp, cp)

    def communicators(self) -> list:
        """Every communicator of the mesh other than COMM_SELF, once each."""
        found = (self.world, self.replicas, self.tp, self.pp, self.cp)
        return list({id(c): c for c in found if c is not None and c != MPI.COMM_SELF}.values())


@dataclass
class Parts:
    """What ``parallelize`` builds; ``Trainer`` runs a step through them."""
    model: torch.nn.Module  # the whole structure, tensor-sharded; this rank runs its ``stage``
    stage: Stage
    pipeline: Pipeline
    sync: object  # the gradient synchronization (parallel/grad_sync.py's interface)
    update: object  # the optimizer of what this rank updates (optim.py's ReplicatedOptimizer, a ShardedOptimizer)
    params: list  # the stage's trained parameters
    names: dict  # id(parameter) -> its single-process name
    clock: StepClock  # communication seconds of the step, by kind ("tp", "cp", "ep", "tie")
    tp: TensorParallel
    context: ContextParallel | None
    experts: ExpertParallel | None
    scaler: LossScaler | None
    n_params: int  # of the single-process model
    flops_per_token: float


def parallelize(cfg, mesh: Mesh, state: dict | None = None, timeline=None, sync_grads: bool = True,
                netem=None) -> Parts:
    """The parts of ``cfg``'s run on this rank of ``mesh``, every rank starting from the same weights (the seed's,
    or ``state``'s: a checkpoint's model and RNG). ``sync_grads=False``: no gradient averaging (a parameter-server
    worker, whose gradients leave by push). ``netem``: the Network every gradient message takes (--netem)."""
    grid, clock, device = mesh.grid, StepClock(), torch.device(cfg.device)
    # context parallelism: the ring attention each block is built with (the whole sequence's keys meet)
    context = ContextParallel(mesh.cp, cfg.model.block_size, clock) if mesh.cp is not None else None
    # the single-process model, identical on every rank
    torch.manual_seed(cfg.seed)
    attention, positions = (context.attention, context.positions) if context else (None, None)
    full = GPT(cfg.model, cfg.recompute, attention, positions)
    if state is not None:
        full.load_state_dict(state["model"])
        torch.set_rng_state(state["torch_rng"])
    n_params, flops_per_token = full.num_params(), full.flops_per_token()
    # tensor parallelism: each layer's heads and columns cut over the tp ranks (whole at tp = 1)
    tp = TensorParallel(mesh.tp, cfg.allreduce, cfg.sequence_parallel, clock)
    model = shard_model(full, tp).to(device)
    if context:  # this rank's positions of each sequence
        context.shard_positions(model)
    # expert parallelism: each rank keeps its experts (before the parameters are listed: others' are not trained)
    experts = ExpertParallel(model, mesh.replicas, cfg.ep, cfg.alltoall, cfg.allreduce, clock) if cfg.ep > 1 else None
    names = {id(p): name for name, p in model.named_parameters()}  # single-process names
    # pipeline parallelism: this rank's layers
    stage = Stage(model, grid.pp_rank, grid.pp, sharded=grid.tp > 1, virtual=cfg.virtual_stages)
    params = [p for p in stage.parameters() if p.requires_grad]
    # gradient sync over the data-parallel replicas (an expert's gradient is ExpertParallel's), then the optimizer
    if sync_grads:
        expert_ids = {id(p) for p in experts.params} if experts else set()
        dense = [p for p in params if id(p) not in expert_ids]
        sync_comm = in_collectives(emulated(mesh.replicas, netem))  # --netem delays it; faults.py's killcomm kills in it
        sync = make_grad_sync(cfg, sync_comm, stage, dense, timeline, world=mesh.world,
                              ddp_groups=grid.all_replica_groups(), ddp_mine=grid.pp_rank * grid.tp + grid.tp_rank)
    else:
        sync = GradSync(params)
    update = make_optimizer(cfg, sync, params)
    ddp = sync.module if isinstance(sync, TorchDDP) else None  # the stage is called through DDP
    pipeline = Pipeline(stage, mesh.pp, cfg.schedule, timeline, forward=ddp, device=device)
    scaler = LossScaler() if cfg.precision == "fp16" else None
    return Parts(model, stage, pipeline, sync, update, params, names, clock, tp, context, experts, scaler,
                 n_params, flops_per_token)
