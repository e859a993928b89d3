"""Run under mpiexec -n K with FROM[:TO] layout pairs: checkpoints resume exactly, under any layout.

    mpiexec -n 4 python tests/programs/resume_layouts.py zero2 dp2-pp2-zero2:tp2-pp2 fp16

For each pair, on all K ranks: train STEPS steps in layout FROM without a
break; train STEPS/2 steps, save checkpoint.pt (checkpoint.save through
``Trainer.save``), load it and train the rest in layout FROM again: the
model, the optimizer state and every loss must be bitwise those of the
unbroken run (torch DDP: within fp32 noise, see NOT_BITWISE). With ``:TO``, also resume the same checkpoint in layout TO
(or "one": rank 0 alone) and compare with the unbroken run within fp32
noise. Prints one line per pair; exits 1 if any check fails.
"""
import sys
import tempfile
from pathlib import Path

import torch
from mpi4py import MPI
from noise import one_process_state, tolerance
from report import case

from parallel_lm.services import checkpoint
from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPTConfig
from parallel_lm.runtime import start_script, on_rank0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
STEPS = 6
base = TrainConfig(model=GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16), global_batch_size=24,
                   data="synthetic", steps=STEPS, warmup_steps=2, bucket_mb=0.02, decay_steps=4)
batches = Batches.from_bytes(load_corpus("synthetic"), base.model.block_size, base.seed)
MOE = GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16, n_experts=4, top_k=2)  # a mixture of experts
LLAMA = GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16, arch="llama")  # untied head, gate_up in sections
LAYOUTS = {
    "one": {}, "dp": {}, "naive": dict(dp_sync="naive"), "zero1": dict(zero=1), "zero2": dict(zero=2),
    "ddp": dict(engine="torch-ddp"), "fp16": dict(precision="fp16"), "tp2": dict(tp=2),
    "tp2-pp2": dict(tp=2, pp=2, micro_batches=2), "dp2-pp2-zero2": dict(pp=2, micro_batches=2, zero=2),
    "dp2-tp2-zero1": dict(tp=2, zero=1), "pp2-fp16": dict(pp=2, micro_batches=2, precision="fp16"),
    "dp2-tp2-pp2-zero1": dict(dp=2, tp=2, pp=2, zero=1, micro_batches=2),
    "zero3": dict(zero=3), "dp2-pp2-zero3": dict(pp=2, micro_batches=2, zero=3),
    "pp2-v2": dict(pp=2, virtual_stages=2, micro_batches=2),
    "dp2-pp2-v2-zero3-recompute": dict(pp=2, virtual_stages=2, micro_batches=2, zero=3, recompute="full"),
    "cp2": dict(cp=2), "cp4": dict(cp=4), "cp2-tp2": dict(cp=2, tp=2),
    "moe": dict(model=MOE), "moe-ep2": dict(model=MOE, ep=2), "moe-ep4": dict(model=MOE, ep=4, alltoall="bruck"),
    "llama-tp2-pp2": dict(model=LLAMA, tp=2, pp=2, micro_batches=2), "llama-cp2-tp2": dict(model=LLAMA, cp=2, tp=2),
    "llama-zero3": dict(model=LLAMA, zero=3), "llama-one": dict(model=LLAMA),
}

# torch DDP regroups its buckets after its first step (in the order gradients became ready), so the first
# step after a resume all-reduces in other groups than the unbroken run did: the same sums, rounded differently.
NOT_BITWISE = {"ddp"}


def config(name):
    return TrainConfig(**{**base.to_dict(), "model": base.model, **LAYOUTS[name]})  # a layout may bring its model


def run(name, steps, state=None, on=comm):
    """(losses, saved checkpoint dict on every rank) after training ``name`` up to ``steps``."""
    trainer = Trainer(config(name), on, batches, state)
    losses = [trainer.train_step(s).loss for s in range(trainer.start_step, steps)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = on.bcast(tmp if on.Get_rank() == 0 else None, root=0)
        trainer.save(Path(folder), steps)
        on.Barrier()
        saved = on.bcast(checkpoint.load(folder) if on.Get_rank() == 0 else None, root=0)
        on.Barrier()
    trainer.close()
    return losses, saved


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def worst(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


tolerances = {}  # repr(model) -> noise.tolerance of its one-process run


def noise_tolerance(name) -> float:
    """This machine's fp32 tolerance for the model of layout ``name`` (the same on every rank)."""
    cfg = TrainConfig(**{**config("one").to_dict(), "model": config(name).model})
    key = repr(cfg.model)
    if key not in tolerances:
        one = lambda c: one_process_state(c, batches)
        tolerances[key] = on_rank0(comm, lambda: tolerance(one, cfg, one(cfg)))
    return tolerances[key]


failures = 0
for pair in sys.argv[1:]:
    source, _, target = pair.partition(":")
    # measured only where a pair is judged within noise: another layout, or torch DDP's regrouped buckets
    TOL = noise_tolerance(source) if target or source in NOT_BITWISE else None
    full_losses, full = run(source, STEPS)
    first, half = run(source, STEPS // 2)
    rest, resumed = run(source, STEPS, half)
    exact = (first + rest == full_losses and same(resumed["model"], full["model"])
             and same(resumed["optimizer"], full["optimizer"]) and same(resumed.get("loss_scaler"), full.get("loss_scaler")))
    has_moments = all("exp_avg" in s for s in full["optimizer"]["by_name"].values())
    ok = (exact or (source in NOT_BITWISE and worst(resumed["model"], full["model"]) <= TOL)) and has_moments
    line = (f"{pair:24s} resumed under {source}: bitwise {exact} "
            f"(max|param diff| {worst(resumed['model'], full['model']):.1e}), optimizer saved {has_moments}")
    if target:
        if target.endswith("one"):
            diff = on_rank0(comm, lambda: worst(run(target, STEPS, half, MPI.COMM_SELF)[1]["model"], full["model"]))
        else:
            other = run(target, STEPS, half, comm)[1]
            diff = comm.bcast(worst(other["model"], full["model"]) if rank == 0 else None, root=0)
        ok = ok and diff <= TOL
        line += f"; under {target}: max|param diff| {diff:.1e} (tol {TOL:.1e})"
    failures += not ok
    if rank == 0:
        case(pair, ok, line, bitwise=exact, optimizer_saved=has_moments, other_layout_diff=diff if target else None)
sys.exit(1 if comm.allreduce(failures, op=MPI.MAX) else 0)
