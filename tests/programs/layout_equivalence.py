"""Run under mpiexec -n K with case names: 5 steps in that layout must match 1-rank training.

    mpiexec -n 4 python tests/programs/layout_equivalence.py zero1 zero2

Rank 0 trains the reference on MPI.COMM_SELF (once per distinct reference
configuration), and with it this machine's fp32 noise floor (noise.py);
then all ranks train the case's layout and compare the full model
(``Trainer.full_state_dict``) with it, within noise.FACTOR x that floor.
ZeRO cases also print memory per rank beside the formula and check it.
Prints one line per case; exits 1 if any check fails.
"""
import sys

import torch
from noise import tolerance
from report import case
from mpi4py import MPI

from parallel_lm.config import TrainConfig
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.parallel.zero import memory_formula
from parallel_lm.runtime import start_script, on_rank0
from parallel_lm.training.trainer import Trainer

start_script()
torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
STEPS, LOW_TOL = 5, 5e-3  # LOW_TOL: bf16/fp16 compute or fp16 gradients round differently
LOW_PRECISION = dict(optimizer="sgd", lr=0.1)
base = TrainConfig(model=GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16), global_batch_size=24,
                   data="synthetic", steps=STEPS, warmup_steps=2, bucket_mb=0.02)
batches = Batches.from_bytes(load_corpus("synthetic"), base.model.block_size, base.seed)
INITIAL = {}  # model config -> its initial state, for the relative update of low-precision cases
LLAMA = GPTConfig(**{**base.model.to_dict(), "arch": "llama"})  # SwiGLU, RMSNorm, rotary, untied head
GQA = GPTConfig(**{**LLAMA.to_dict(), "n_kv_head": 2})  # and grouped-query attention: 2 key/value heads for 4
CASES = {
    "dp": dict(), "zero1": dict(zero=1), "zero2": dict(zero=2), "zero2-accum": dict(zero=2, micro_batch_size=2),
    "zero1-sgd": dict(zero=1, optimizer="sgd", lr=0.1),
    "pp2-gpipe": dict(pp=2, micro_batches=4, schedule="gpipe"), "pp2-1f1b": dict(pp=2, micro_batches=4),
    "pp4-1f1b": dict(pp=4, micro_batches=3), "dp2-pp2-zero1": dict(pp=2, micro_batches=2, zero=1),
    "tp2": dict(tp=2), "tp4": dict(tp=4), "tp2-sp": dict(tp=2, sequence_parallel=True),
    "tp4-sp": dict(tp=4, sequence_parallel=True), "dp2-tp2-sp-zero1": dict(tp=2, sequence_parallel=True, zero=1),
    "tp2-pp2-sp": dict(tp=2, pp=2, micro_batches=2, sequence_parallel=True),
    "tp2-sp-recompute": dict(tp=2, sequence_parallel=True, recompute="full"),
    "cp2": dict(cp=2), "cp4": dict(cp=4), "cp2-dp2": dict(cp=2),
    "cp2-tp2": dict(cp=2, tp=2), "cp2-tp2-sp": dict(cp=2, tp=2, sequence_parallel=True), "cp2-pp2": dict(cp=2, pp=2, micro_batches=2),
    "cp2-zero2": dict(cp=2, zero=2), "cp2-recompute": dict(cp=2, recompute="selective"),
    "tp2-sp-bf16": dict(tp=2, sequence_parallel=True, precision="bf16", **LOW_PRECISION), "dp2-tp2": dict(tp=2), "dp2-tp2-zero2": dict(tp=2, zero=2),
    "dp2-tp2-pp2-zero1": dict(dp=2, tp=2, pp=2, zero=1, micro_batches=2),
    # ZeRO-3: parameters sharded, gathered layer by layer
    "zero3": dict(zero=3), "zero3-accum": dict(zero=3, micro_batch_size=2), "zero3-no-prefetch": dict(zero=3, overlap=False),
    "zero3-sgd": dict(zero=3, optimizer="sgd", lr=0.1), "zero3-recompute": dict(zero=3, recompute="full"),
    "dp2-pp2-zero3": dict(pp=2, micro_batches=2, zero=3), "dp2-tp2-zero3-bf16": dict(tp=2, zero=3, precision="bf16"),
    "dp2-pp2-v2-zero3-fp16": dict(pp=2, virtual_stages=2, micro_batches=2, zero=3, precision="fp16"),
    # the combination matrix: every pair of {layout, ZeRO stage, sync, overlap, precision, comm dtype, accumulation}
    "dp2-pp2-zero2": dict(pp=2, micro_batches=2, zero=2),
    "dp2-pp2-comm16": dict(pp=2, micro_batches=2, comm_dtype="fp16"),
    "dp2-pp2-bf16-zero1": dict(pp=2, micro_batches=3, precision="bf16", zero=1),
    "dp2-pp2-fp16-no-overlap": dict(pp=2, micro_batches=2, precision="fp16", overlap=False),
    "dp2-tp2-naive-accum": dict(tp=2, dp_sync="naive", micro_batch_size=4),
    "dp2-tp2-fp16": dict(tp=2, precision="fp16"),
    "dp2-tp2-zero1-comm16-accum": dict(tp=2, zero=1, comm_dtype="fp16", micro_batch_size=6),
    "dp2-tp2-ddp": dict(tp=2, engine="torch-ddp"),
    "tp2-pp2-fp16-zero2": dict(tp=2, pp=2, micro_batches=2, precision="fp16", zero=2),
    "ddp-fp16-comm16-accum": dict(engine="torch-ddp", precision="fp16", comm_dtype="fp16", micro_batch_size=2),
    "dp2-tp2-pp2-zero2-bf16-comm16": dict(dp=2, tp=2, pp=2, zero=2, precision="bf16", comm_dtype="fp16",
                                          micro_batches=3),
    # interleaved 1F1B: v chunks of layers per pipeline rank
    "pp2-v2": dict(pp=2, virtual_stages=2, micro_batches=4), "pp4-v1-m4": dict(pp=4, micro_batches=4),
    "pp2-v2-m2": dict(pp=2, virtual_stages=2, micro_batches=2),
    "dp2-pp2-v2-zero2": dict(pp=2, virtual_stages=2, micro_batches=2, zero=2),
    "dp2-pp2-v2-bucketed": dict(pp=2, virtual_stages=2, micro_batches=2),
    "tp2-pp2-v2-fp16": dict(tp=2, pp=2, virtual_stages=2, micro_batches=4, precision="fp16"),
    "dp2-pp2-v2-recompute": dict(pp=2, virtual_stages=2, micro_batches=2, recompute="full"),
    # a global batch that does not divide over the data-parallel ranks: shares weighted by their rows
    "uneven": dict(global_batch_size=12), "uneven-accum": dict(global_batch_size=13, micro_batches=2),
    "uneven-zero2": dict(global_batch_size=11, zero=2, micro_batches=2), "uneven-zero3": dict(global_batch_size=11, zero=3),
    "uneven-micro-1f1b": dict(global_batch_size=10, pp=2, micro_batches=3),
    "uneven-zero3-sgd": dict(global_batch_size=11, zero=3, optimizer="sgd", lr=0.1),
    "uneven-naive-fp16": dict(global_batch_size=12, dp_sync="naive", precision="fp16"),
    "uneven-ddp": dict(global_batch_size=12, engine="torch-ddp"),
    "uneven-dp3-pp2": dict(global_batch_size=14, pp=2, micro_batches=2),
    # activation recomputation
    "recompute-full": dict(recompute="full"), "recompute-selective": dict(recompute="selective"),
    "dp2-tp2-recompute-full-bf16": dict(tp=2, recompute="full", precision="bf16"),
    "tp2-pp2-recompute-selective-accum": dict(tp=2, pp=2, recompute="selective", micro_batches=4),
    # the llama block (--arch llama) under every kind of parallelism
    "llama-dp": dict(model=LLAMA), "llama-zero1": dict(model=LLAMA, zero=1),
    "llama-tp2": dict(model=LLAMA, tp=2), "llama-tp4-sp": dict(model=LLAMA, tp=4, sequence_parallel=True),
    "llama-pp2": dict(model=LLAMA, pp=2, micro_batches=2), "llama-pp4-1f1b": dict(model=LLAMA, pp=4, micro_batches=3),
    "llama-cp2": dict(model=LLAMA, cp=2), "llama-cp4": dict(model=LLAMA, cp=4),
    "llama-cp2-tp2-sp": dict(model=LLAMA, cp=2, tp=2, sequence_parallel=True),
    "llama-tp2-pp2-sp": dict(model=LLAMA, tp=2, pp=2, micro_batches=2, sequence_parallel=True),
    "llama-dp2-pp2-v2-zero2": dict(model=LLAMA, pp=2, virtual_stages=2, micro_batches=2, zero=2),
    "llama-zero3": dict(model=LLAMA, zero=3), "llama-dp2-tp2-zero3-bf16": dict(model=LLAMA, tp=2, zero=3, precision="bf16"),
    "llama-cp2-pp2-recompute": dict(model=LLAMA, cp=2, pp=2, micro_batches=2, recompute="selective"),
    "llama-tp2-recompute-full": dict(model=LLAMA, tp=2, recompute="full"),
    "gqa-dp": dict(model=GQA), "gqa-tp2-sp": dict(model=GQA, tp=2, sequence_parallel=True),
    "gqa-cp4": dict(model=GQA, cp=4), "gqa-cp2-tp2": dict(model=GQA, cp=2, tp=2),
    "gqa-pp2-zero3": dict(model=GQA, pp=2, micro_batches=2, zero=3),
}


def train(cfg, on):
    """(full state_dict on this communicator's rank 0, else None; memory of this rank)."""
    trainer = Trainer(cfg, on, batches)
    for s in range(cfg.steps):
        trainer.train_step(s)
    full = trainer.full_state_dict()
    state = {k: v.detach().clone() for k, v in full.items()} if full is not None and on.Get_rank() == 0 else None
    memory = trainer.memory()
    trainer.close()
    return state, memory


references = {}  # repr(reference config) -> (state, tolerance): cases that share a reference train it once


def reference_and_tolerance(ref_cfg):
    """Rank 0's one-process state and fp32 tolerance for ``ref_cfg`` (None elsewhere)."""
    key = repr(ref_cfg)
    if key not in references:
        one = lambda c: train(c, MPI.COMM_SELF)[0]
        state = one(ref_cfg)
        references[key] = (state, tolerance(one, ref_cfg, state))
    return references[key]


failures = 0
for name in sys.argv[1:]:
    low = CASES[name].get("precision", "fp32") != "fp32" or CASES[name].get("comm_dtype") == "fp16"
    # Low precision rounds each gradient differently; AdamW would turn the rounding of tiny gradients into
    # whole +-lr steps. SGD keeps the parameters' error proportional to the gradients' error.
    cfg = TrainConfig(**{**base.to_dict(), "model": base.model, **(LOW_PRECISION if low else {}), **CASES[name]})
    ref_cfg = TrainConfig(**{**cfg.to_dict(), "model": cfg.model, "zero": 0, "tp": 1, "pp": 1, "dp": None,
                             "engine": "explicit", "comm_dtype": "fp32", "virtual_stages": 1,
                             "recompute": "none", "cp": 1, "sequence_parallel": False})  # one process: nothing to communicate, nothing recomputed
    reference, tol = on_rank0(comm, lambda: reference_and_tolerance(ref_cfg))
    state, memory = train(cfg, comm)
    if rank == 0 and set(state) == set(reference):
        diff = max(float((state[k] - reference[k]).abs().max()) for k in reference)
        if repr(cfg.model) not in INITIAL:
            torch.manual_seed(cfg.seed)
            INITIAL[repr(cfg.model)] = GPT(cfg.model).state_dict()
        initial = INITIAL[repr(cfg.model)]
        moved = [(state[k] - initial[k], reference[k] - initial[k]) for k in reference]
        rel = float(sum((a - b).pow(2).sum() for a, b in moved).sqrt() / sum(b.pow(2).sum() for _, b in moved).sqrt())
    else:
        diff = rel = float("inf")
    diff, rel = comm.bcast((diff, rel) if rank == 0 else None, root=0)
    if low:
        ok = rel <= LOW_TOL
        line = (f"{name:14s} |update - 1-rank update| / |1-rank update| = {rel:.2e} "
                f"(tol {LOW_TOL:.0e}, SGD), max|param diff| {diff:.1e}")
    else:
        ok = diff <= tol
        line = f"{name:14s} max|param - 1-rank param| = {diff:.2e} (tol {tol:.1e})"
    worst = None  # ZeRO without model parallelism: the largest relative gap of memory per rank to the formula
    if cfg.zero and cfg.tp == 1 and cfg.pp == 1:
        n = GPT(cfg.model).num_params()  # the tied embedding once (state_dict lists it twice)
        want = memory_formula(n, cfg.zero, p, cfg.optimizer)
        worst = comm.allreduce(max(abs(memory[k] / want[k] - 1) for k in want if want[k]), op=MPI.MAX)
        ok = ok and worst < 0.02  # chunks of uneven buckets differ from Psi/Nd by a few elements
        line += "; memory/rank " + ", ".join(f"{k} {memory[k] / 1e3:.1f} kB (formula {want[k] / 1e3:.1f})" for k in want)
        line += f", worst {100 * worst:.2f}% off, bucket in flight {memory['bucket_in_flight'] / 1e3:.1f} kB"
        if cfg.zero == 3:  # at most the root (embeddings, final norm, head), the running layer and the prefetched one
            model = GPT(cfg.model)
            blocks = [sum(q.numel() for q in b.parameters()) * 4 for b in model.blocks]
            bound = n * 4 - sum(blocks) + 2 * max(blocks)
            ok = ok and 0 < memory["live_layers"] <= bound
            line += f", live layers {memory['live_layers'] / 1e3:.1f} kB (<= root + 2 blocks {bound / 1e3:.1f})"
    failures += not ok
    if rank == 0:
        case(name, ok, line, diff=diff, relative_update_diff=rel, memory_worst=worst)
sys.exit(1 if comm.allreduce(failures, op=MPI.MAX) else 0)
