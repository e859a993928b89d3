"""The gradient synchronization and the optimizer a run asks for: the one place that knows every implementation.

grad_sync.py holds the interface the implementations share; this module sits above them all, so none of
them imports another through it (the factory used to live beside the interface, which made a circle).
"""
from __future__ import annotations

from .data_parallel import BucketedDataParallel, NaiveDataParallel
from .optim import ReplicatedOptimizer
from .torch_ddp import TorchDDP
from .zero import ShardedOptimizer, Zero
from .zero3 import Zero3


def make_grad_sync(cfg, dp_comm, stage, params, timeline=None, world=None, ddp_groups=None, ddp_mine=0):
    """The gradient synchronization ``cfg`` asks for, over ``dp_comm``, of ``stage``'s ``params``.

    torch DDP starts torch.distributed on ``world`` and builds its own process
    groups: ``ddp_groups`` lists every data-parallel group's world ranks,
    ``ddp_mine`` is this rank's index among them.
    """
    if cfg.zero == 3:
        return Zero3(stage, dp_comm, cfg.allreduce, cfg.comm_dtype, timeline, prefetch=cfg.overlap)
    if cfg.zero:
        deferred = [stage.tied] if stage.tied is not None and not (stage.first and stage.last) else []
        return Zero(params, dp_comm, cfg.zero, cfg.bucket_mb, cfg.allreduce, cfg.comm_dtype, timeline,
                    deferred=deferred)
    if cfg.engine == "torch-ddp":
        world = world or dp_comm
        return TorchDDP(stage, world, ddp_groups or [list(range(world.Get_size()))], ddp_mine, cfg.bucket_mb,
                        cfg.comm_dtype)
    if cfg.dp_sync == "naive":
        return NaiveDataParallel(params, dp_comm, cfg.allreduce, cfg.comm_dtype, timeline)
    return BucketedDataParallel(params, dp_comm, cfg.allreduce, cfg.bucket_mb, cfg.overlap, cfg.comm_dtype, timeline)


def make_optimizer(cfg, sync, params):
    """The optimizer of what this rank updates: under ZeRO the shard ``sync`` (a ``Zero``) holds, else every
    parameter in ``params``, whole."""
    if isinstance(sync, Zero):
        return ShardedOptimizer(sync, cfg.optimizer, cfg.lr, cfg.weight_decay)
    return ReplicatedOptimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay)
