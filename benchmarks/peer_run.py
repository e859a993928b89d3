"""One peer's training run, under mpiexec: the same GPT, data, batch and optimizer for every peer.

    mpiexec -n 2 python benchmarks/peer_run.py ddp --steps 20 --preset small --batch 16

Peers: ours (dp, zero1, zero2, zero3: parallel_lm's Trainer), ddp (torch DistributedDataParallel), fsdp2
(torch's fully_shard on every block and the root), deepspeed-zero1/2/3 (when deepspeed imports), horovod
(hvd.DistributedOptimizer over MPI; when horovod.torch imports: ``make horovod`` builds it). Every peer
starts from the seed's weights, reads step s's rows r*B/K..(r+1)*B/K of the same global batch, and steps
AdamW (betas 0.9, 0.95, foreach off, decay on matrices only) at the same learning rate; clipping is off
(DeepSpeed clips at 1.0 unless told). Rank 0 prints one JSON line: the median step seconds after the
first 3, tokens/s, the peak RSS per rank above what the process held before the model existed, and the
global mean loss of every step.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from parallel_lm.config import TrainConfig  # noqa: E402
from parallel_lm.model import GPT, PRESETS  # noqa: E402
from parallel_lm.parallel.optim import BETAS, decay_groups  # noqa: E402
from parallel_lm.training.data import Batches, load_corpus  # noqa: E402

PEERS = ("ours-dp", "ours-zero1", "ours-zero2", "ours-zero3", "ddp", "fsdp2",
         "deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3", "horovod")
LR, WEIGHT_DECAY = 1e-3, 0.1


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def adamw(model):
    """The optimizer every torch peer steps: AdamW, decay on matrices only, the same learning rate as ours."""
    return torch.optim.AdamW(decay_groups(model.parameters(), WEIGHT_DECAY), lr=LR, betas=BETAS, foreach=False)


def timed_steps(step_fn, global_mean, batches, B: int, lo: int, hi: int, steps: int):
    """Rows lo..hi of each step's global batch of B through ``step_fn`` (-> this rank's loss); (the global mean
    loss of each step by ``global_mean``, the seconds of each step)."""
    losses, times = [], []
    for s in range(steps):
        t0 = time.perf_counter()
        x, y = batches.rows(s, "train", B, lo, hi)
        losses.append(global_mean(step_fn(x, y).detach()))
        times.append(time.perf_counter() - t0)
    return losses, times


def ours(cfg, comm, batches, steps):
    from parallel_lm.training.trainer import Trainer
    trainer = Trainer(cfg, comm, batches)
    losses, times = [], []
    for s in range(steps):
        t0 = time.perf_counter()
        losses.append(trainer.train_step(s).loss)
        times.append(time.perf_counter() - t0)
    trainer.close()
    return losses, times


def torch_peer(peer, cfg, comm, batches, steps, shm=True):
    """ddp, fsdp2 or deepspeed-zeroN: the model wrapped, torch's AdamW, the same rows and learning rate.

    DeepSpeed reduces through its shared-memory op on the CPU, which g++ compiles on its first use (about 40 s,
    then cached in TORCH_EXTENSIONS_DIR); ``shm=False`` leaves it out.
    """
    import torch.distributed as dist

    from parallel_lm.parallel.torch_ddp import init_process_group
    init_process_group(comm)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    rank, k, B = comm.Get_rank(), comm.Get_size(), cfg.global_batch_size
    lo, hi = rank * B // k, (rank + 1) * B // k
    if peer.startswith("deepspeed"):
        import os

        import deepspeed
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        os.environ.update(LOCAL_RANK=str(local.Get_rank()), RANK=str(rank), WORLD_SIZE=str(k))  # its sanity check
        local.Free()
        if not shm:  # no compiled op: DeepSpeed then reduces on gloo, as torch's peers do
            deepspeed.ops.__compatible_ops__ = {}
        config = {"train_micro_batch_size_per_gpu": hi - lo, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
                  "zero_optimization": {"stage": int(peer[-1])}, "steps_per_print": 10**9}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=adamw(model), config=config)
        step_fn = lambda x, y: (engine.backward(loss := engine(x, y)[1]), engine.step(), loss)[-1]
    else:
        if peer == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard
            for block in model.blocks:
                fully_shard(block)
            wrapped = fully_shard(model)
        optimizer = adamw(model)

        def step_fn(x, y):
            loss = wrapped(x, y)[1]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    def global_mean(loss):
        dist.all_reduce(loss)
        return float(loss) / k
    losses, times = timed_steps(step_fn, global_mean, batches, B, lo, hi, steps)
    dist.barrier()
    return losses, times


def horovod_peer(cfg, comm, batches, steps):
    """Horovod as its docs use it: broadcast the weights, DistributedOptimizer (averages each gradient on
    MPI, fused by its background thread), the loss averaged by hvd.allreduce."""
    import horovod.torch as hvd
    hvd.init(comm=comm)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(adamw(model), named_parameters=model.named_parameters())
    rank, k, B = comm.Get_rank(), comm.Get_size(), cfg.global_batch_size

    def step_fn(x, y):
        loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()  # Horovod's wrapper takes no set_to_none
        return loss

    losses, times = timed_steps(step_fn, lambda loss: float(hvd.allreduce(loss, name="loss")), batches, B,
                                rank * B // k, (rank + 1) * B // k, steps)
    hvd.shutdown()
    return losses, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", choices=PEERS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="small", choices=tuple(PRESETS))
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    ap.add_argument("--deepspeed-no-shm", action="store_true",
                    help="DeepSpeed on gloo, without its shared-memory op (compiled on first use, about 40 s)")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    torch.set_num_threads(1)
    before = rss_mib()
    zero = int(args.peer[-1]) if args.peer.startswith("ours-zero") else 0
    cfg = TrainConfig(model=PRESETS[args.preset], global_batch_size=args.batch, steps=args.steps, zero=zero, lr=LR,
                      min_lr=LR, warmup_steps=0, decay_steps=0, weight_decay=WEIGHT_DECAY, grad_clip=0.0)
    batches = Batches.from_bytes(load_corpus("stdlib"), cfg.model.block_size, cfg.seed)
    run = (ours if args.peer.startswith("ours") else horovod_peer if args.peer == "horovod"
           else lambda *a: torch_peer(args.peer, *a, shm=not args.deepspeed_no_shm))
    losses, times = run(cfg, comm, batches, args.steps)
    peak = comm.gather(rss_mib() - before, root=0)
    if comm.Get_rank() == 0:
        step_s = statistics.median(times[3:] or times)
        tokens = args.batch * cfg.model.block_size
        print("RESULT " + json.dumps({"peer": args.peer, "ranks": comm.Get_size(), "step_s": step_s,
                                      "tokens_per_s": tokens / step_s, "peak_rss_mib": max(peak), "losses": losses}),
              flush=True)


if __name__ == "__main__":
    main()
