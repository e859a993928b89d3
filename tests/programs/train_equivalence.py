"""Run under mpiexec -n K: 5 training steps on K ranks must match 1-rank training.

Rank 0 first trains the reference on MPI.COMM_SELF (one rank, the whole
global batch). Then all ranks train together with every all-reduce
algorithm, with and without gradient accumulation and overlap, the naive
per-parameter sync, fp16 gradient communication and torch DDP, and compare
their parameters with the reference (max abs difference printed, within
noise.FACTOR x this machine's measured fp32 noise floor) and with each
other (bitwise). Exits 1 if any check fails.
"""
import hashlib
import sys

import numpy as np
import torch
from mpi4py import MPI
from noise import tolerance
from report import case

from parallel_lm.comm import ALGORITHMS
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.runtime import start_script, on_rank0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
STEPS = 5
base = TrainConfig(model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32), global_batch_size=24,
                   data="synthetic", steps=STEPS, warmup_steps=2, bucket_mb=0.02)  # ~5 buckets
batches = Batches.from_bytes(load_corpus("synthetic"), base.model.block_size, base.seed)


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy().copy()


def train(cfg, on):
    """(parameters after cfg.steps, losses, gradients of the first step).

    The first step's averaged gradients are compared too: AdamW barely notices
    if gradients are summed instead of averaged, a gradient check does.
    """
    trainer = Trainer(cfg, on, batches)
    losses, grads = [], None
    for s in range(cfg.steps):
        losses.append(trainer.train_step(s).loss)
        if s == 0:
            grads = flat(q.grad for q in trainer.model.parameters())
    params = flat(trainer.model.parameters())
    trainer.close()
    return params, losses, grads


base.grad_clip = 0.0  # so the first step's gradients are the raw average


def noise_tolerance(reference):
    """noise.tolerance for the reference run (the same training summed in micro-batches on one process)."""
    def one(cfg):
        params = train(cfg, MPI.COMM_SELF)[0]
        return {"params": torch.from_numpy(params)}
    return tolerance(one, base, {"params": torch.from_numpy(reference[0])})


def reference_and_tolerance():
    reference = train(base, MPI.COMM_SELF)
    return reference, noise_tolerance(reference)


reference, TOL = on_rank0(comm, reference_and_tolerance)
rows = base.global_batch_size // p
cases = [(f"{algo} accum={accum} overlap={overlap}",
          dict(allreduce=algo, micro_batch_size=rows // 2 if accum and rows % 2 == 0 else (1 if accum else None), overlap=overlap))
         for algo in ALGORITHMS for accum in (False, True) for overlap in (True, False)]
cases += [("naive per-parameter", dict(dp_sync="naive")), ("comm fp16", dict(comm_dtype="fp16")),
          ("torch-ddp", dict(engine="torch-ddp"))]
failures = 0
for name, overrides in cases:
    cfg = TrainConfig(**{**base.to_dict(), "model": base.model, **overrides})
    params, losses, grads = train(cfg, comm)
    diff = float(np.abs(params - reference[0]).max())
    gdiff = float(np.abs(grads - reference[2]).max() / np.abs(reference[2]).max())
    tol, gtol = (5e-3, 2e-3) if overrides.get("comm_dtype") == "fp16" else (TOL, 1e-5)
    same = len(set(comm.allgather(hashlib.sha1(params.tobytes()).hexdigest()))) == 1
    ok = diff <= tol and gdiff <= gtol and same
    failures += not ok
    if rank == 0:
        case(name, ok, f"{name:40s} max|param - 1-rank param| = {diff:.2e} (tol {tol:.1e}), step-1 grads rel "
             f"{gdiff:.1e}, ranks bitwise equal: {same}, final loss {losses[-1]:.4f} vs {reference[1][-1]:.4f}",
             diff=diff, tol=tol, grads_rel=gdiff, bitwise_across_ranks=same)
if rank == 0:
    print(f"EQUIVALENCE {p} ranks: {len(cases) - failures}/{len(cases)} ok", flush=True)
sys.exit(1 if failures else 0)
