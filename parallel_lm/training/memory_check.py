"""Will the run fit? Peak memory per rank, estimated before any model is built, from the predictor's formulas.

The terms are costmodel/layout.py's ``memory_per_gpu`` for this run's
layout (fp32 weights, gradients and optimizer state in costmodel/memory.py's
``state_bytes``, each divided over the
data-parallel ranks from the ZeRO stage that shards it; the activations
of the first pipeline stage's layers for the micro-batches 1F1B keeps in
flight, under the run's --recompute) plus the logits and their fp32 copy on
the last stage. Attention keeps no T x T score matrix: torch's fused
``scaled_dot_product_attention`` keeps one log-sum-exp per row and
recomputes the scores in backward (``ModelShape.fused_attention``).

``check`` compares the ranks on this node with the memory the node has
available (Linux's MemAvailable), or with the GPU's free memory under
``--device cuda``, and refuses a run that cannot fit, naming its largest
term and what to change. ``peak_mib`` is what the process really held, for
the line printed at the end of a run beside the estimate.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

from ..costmodel.layout import Layout, memory_per_gpu
from .utilization import shape_of

GIB = 2**30
FIXES = {"activations": "lower --micro-batch-size (gradient accumulation keeps the global batch) or --block-size, "
                        "or recompute them with --recompute full",
         "logits": "lower --micro-batch-size or --block-size, or split the vocabulary with --tp",
         "weights": "shard them with --zero 3, train a smaller model (--preset, --n-embd, --n-layer) or split it with --tp / --pp",
         "gradients": "shard them with --zero 2, or split the model with --tp / --pp",
         "optimizer": "shard it with --zero 1, or split the model with --tp / --pp"}


def estimate(cfg, grid) -> dict[str, float]:
    """Bytes per rank, by term, of the fullest rank of ``cfg``'s layout on ``grid``."""
    m = cfg.model
    shape = shape_of(m)
    data = grid.dp
    _, micro, n_micro = cfg.per_rank(data)
    # the fullest rank's share as if every rank held it (a batch that does not divide leaves some one row short)
    layout = Layout(global_batch=data * micro * n_micro, micro_batch=micro, dp=data, cp=cfg.cp, tp=grid.tp,
                    pp=grid.pp, virtual_stages=cfg.virtual_stages, zero=cfg.zero, recompute=cfg.recompute,
                    precision="fp32", optimizer=cfg.optimizer, sequence_parallel=cfg.sequence_parallel)
    terms = memory_per_gpu(shape, layout)
    if cfg.precision != "fp32":  # autocast keeps most activations in 16 bits
        terms["activations"] /= 2
    terms["logits"] = 2 * 4 * micro * m.block_size // cfg.cp * m.vocab_size / grid.tp
    return terms


def available_bytes(device: str) -> float | None:
    """Memory free for this run: the GPU's under cuda, else the node's MemAvailable; None when unknown."""
    if device == "cuda":
        import torch
        return float(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check(cfg, grid, ranks_here: int, available: float | None) -> dict[str, float]:
    """The estimate; ValueError naming the largest term and the fix when ``ranks_here`` ranks cannot fit."""
    terms = estimate(cfg, grid)
    per_rank = sum(terms.values())
    if available is not None and per_rank * ranks_here > available:
        name = max(terms, key=terms.get)
        where = "on the GPU" if cfg.device == "cuda" else "on this node"
        raise ValueError(
            f"this run needs ~{per_rank / GIB:.1f} GiB per rank ({name} {terms[name] / GIB:.1f} GiB at --block-size "
            f"{cfg.model.block_size}, micro-batch {cfg.per_rank(grid.dp)[1]}), {ranks_here} rank(s) x that = "
            f"{per_rank * ranks_here / GIB:.1f} GiB, but {available / GIB:.1f} GiB are available {where}: "
            f"{FIXES[name]}; or pass --force to try anyway")
    return terms


def peak_mib() -> float:
    """The most memory this process has held so far (resident set), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def report(terms: dict[str, float], before_mib: float) -> str:
    """The estimate beside what the process took on top of what it held before building the model."""
    parts = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in terms.items())
    used = peak_mib() - before_mib
    return (f"memory per rank: estimated {sum(terms.values()) / 2**20:.1f} MiB ({parts}); measured peak "
            f"{used:.1f} MiB above the {before_mib:.0f} MiB the process held before training (rank 0)")
