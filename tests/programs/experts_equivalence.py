"""Run under mpiexec -n K: a mixture-of-experts GPT trained 5 steps with expert parallelism must match one process.

Rank 0 trains the reference on MPI.COMM_SELF: the same E experts, the whole
global batch. Then the K ranks train with replicated experts (ep 1, plain and
with ZeRO-1), and with every ep dividing K (and E) with each all-to-all
algorithm, for top-1 and top-2 routing and a capacity that drops assignments, and
compare the full model (every expert gathered from the rank that trained it,
Trainer.full_state_dict) and the step losses with the reference. Exits 1 on
any failure; prints "EXPERTS K ranks: n/n ok".
"""
import sys

import numpy as np
import torch
from mpi4py import MPI
from noise import tolerance
from report import case

from parallel_lm.comm import ALLTOALL_ALGORITHMS
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.runtime import start_script, on_rank0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
STEPS, E = 5, 4
failures, total = 0, 0
for top_k in (1, 2):
    model = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, n_experts=E, top_k=top_k, capacity_factor=1.0)
    base = TrainConfig(model=model, global_batch_size=24, data="synthetic", steps=STEPS, warmup_steps=2, bucket_mb=0.02)
    batches = Batches.from_bytes(load_corpus("synthetic"), base.model.block_size, base.seed)

    def train(cfg, on):
        trainer = Trainer(cfg, on, batches)
        records = [trainer.train_step(s) for s in range(cfg.steps)]
        state = trainer.full_state_dict()
        trainer.close()
        return state, [r.loss for r in records], records[-1].experts

    one = lambda cfg: {k: v.detach().clone() for k, v in train(cfg, MPI.COMM_SELF)[0].items()}

    def reference_and_tolerance():
        reference = train(base, MPI.COMM_SELF)
        return reference, tolerance(one, base, reference[0])  # noise.py

    reference, TOL = on_rank0(comm, reference_and_tolerance)
    cases = [(1, "pairwise", 0), (1, "pairwise", 1)] + \
        [(ep, algorithm, 0) for ep in (2, 4) if p % ep == 0 for algorithm in ALLTOALL_ALGORITHMS]
    for ep, algorithm, zero in cases:
        cfg = TrainConfig(**{**base.to_dict(), "model": model, "ep": ep, "alltoall": algorithm, "zero": zero})
        state, losses, routed = train(cfg, comm)
        total += 1
        if rank == 0:
            diff = max(float((state[k] - reference[0][k]).abs().max()) for k in reference[0])
            loss_diff = float(np.max(np.abs(np.array(losses) - reference[1])))
            ok = diff <= TOL and loss_diff <= TOL and routed["tokens"] == reference[2]["tokens"]
            name = f"top-{top_k} ep {ep} {algorithm} zero {zero}"
            case(name, ok, f"top-{top_k} ep {ep} of dp {p}, {algorithm:8s} zero {zero}: max|param - 1-process| = "
                 f"{diff:.2e} (tol {TOL:.1e}), losses {loss_diff:.1e}, tokens per expert {routed['tokens']} "
                 f"(1 process {reference[2]['tokens']}), dropped {100 * routed['dropped']:.1f}%",
                 diff=diff, tol=TOL, loss_diff=loss_diff, tokens=routed["tokens"])
        failures += comm.bcast(0 if rank else int(not ok), root=0)
if rank == 0:
    print(f"EXPERTS {p} ranks: {total - failures}/{total} ok", flush=True)
sys.exit(1 if failures else 0)
