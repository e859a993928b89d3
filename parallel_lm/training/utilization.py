"""How much of the machine a run used: MFU and HFU, and the activation memory beside its formula.

MFU (model FLOPs utilization, Chowdhery et al. 2022, appendix B) counts
only the FLOPs the model needs, 6N + 12·L·T·C per token; HFU (hardware
FLOPs utilization) adds what recomputation runs again: every block's
forward under ``--recompute full``, the attention core under ``selective``
(costmodel/transformer.py's ``hardware_flops``). Both are over a peak: the
device's datasheet figure with ``--peak-tflops``, else a large fp32 matrix
multiply timed on this node (rank 0 alone, with every core), shared by the
ranks on the node: the best such probe this machine has recorded, so that a
probe taken while the machine is busy does not shrink the peak.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ..costmodel.transformer import ARCH_SHAPES, ModelShape
from ..services.metrics import write_atomic
from ..parallel.zero import memory_formula
from ..runtime import on_rank0


def shape_of(model_cfg, cp: int = 1) -> ModelShape:
    """parallel_lm's GPT (gpt or llama) as the cost model sees it: no dropout, a fused attention kernel. With ``cp``, the
    T/cp tokens one context-parallel rank holds: everything it keeps for backward is per token (ring
    attention keeps Q, K, V, its output and one log-sum-exp per row, as a fused kernel does)."""
    m = model_cfg
    return ModelShape(m.n_layer, m.n_embd, m.n_head, m.block_size // cp, m.vocab_size, n_kv_head=m.n_kv_head,
                      ffn_hidden=m.ffn_hidden, fused_attention=True, **{"dropout": False, **ARCH_SHAPES[m.arch]})


def matmul_peak(threads: int, n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of the best of repeated n x n fp32 matrix multiplies on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, end = 0.0, time.perf_counter() + seconds
    try:
        while time.perf_counter() < end or best == 0.0:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    return best


def remembered_peak(now: float, cores: int, cache: Path | None) -> tuple[float, str]:
    """The best matmul FLOP/s seen on this machine with ``cores`` cores (``now``'s probe included), and where it comes
    from. A probe on a busy machine reads low, and MFU over it reads high (once 98% of 2.3 GFLOP/s): the best probe
    recorded in ``cache`` stands for the machine's peak, with its date, and ``now`` says whether the machine is
    busy at this moment."""
    key = f"{platform.node()} {cores} cores torch {torch.__version__}"
    seen = {}
    if cache is not None:
        try:
            seen = json.loads(cache.read_text())
        except (OSError, ValueError):
            seen = {}
    best = seen.get(key)
    what = f"a 1024x1024 fp32 matmul on {cores} core(s)"
    if best is None or now >= best["flops"]:
        if cache is not None:
            seen[key] = {"flops": now, "measured": time.strftime("%Y-%m-%d %H:%M")}
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cache, lambda tmp: tmp.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n"))
            except OSError:
                pass  # a read-only home: the probe still stands for this run
        return now, f"{what}: {now / 1e9:.1f} GFLOP/s"
    busy = "; the machine is busy now, so steps are slow" if now < 0.5 * best["flops"] else ""
    return best["flops"], (f"{what}: {best['flops'] / 1e9:.1f} GFLOP/s, the best probe here, {best['measured']}; "
                           f"{now / 1e9:.1f} now{busy}")


def peak_per_rank(comm, share: tuple[int, int], peak_tflops: float | None,
                  cache: Path | None = None) -> tuple[float, str]:
    """(FLOP/s one rank may reach, where the figure comes from): ``--peak-tflops``, else the best matmul probe this
    machine has seen (``remembered_peak``), shared by the ranks on the node. Collective."""
    if peak_tflops:
        return peak_tflops * 1e12, f"--peak-tflops {peak_tflops:g}"
    on_node, cores = share
    node, source = on_rank0(comm, lambda: remembered_peak(matmul_peak(cores), cores, cache))
    return node / on_node, f"{source}, / {on_node} rank(s)"


def utilization_line(cfg, flops_per_token: float, records, ranks: int, peak: tuple[float, str]) -> str:
    """MFU and HFU of the median step, per rank, over ``peak`` (``peak_per_rank``)."""
    step_s = statistics.median(r.step_s for r in records)
    tokens = cfg.global_batch_size * cfg.model.block_size
    model = flops_per_token * tokens / step_s / ranks
    shape = shape_of(cfg.model)
    hardware = model * shape.hardware_flops(1.0, cfg.recompute) / shape.model_flops(1.0)
    flops, source = peak
    doubt = ("\n  (HFU above 90%: the peak is too low, a probe taken while the machine was busy or a --peak-tflops "
             "below this machine's)") if hardware > 0.9 * flops else ""
    return (f"utilization: MFU {100 * model / flops:.1f}% (model FLOPs, {model / 1e9:.2f} GFLOP/s per rank), "
            f"HFU {100 * hardware / flops:.1f}% (recompute {cfg.recompute} counted) of {flops / 1e9:.1f} GFLOP/s "
            f"per rank ({source}){doubt}")


def _model_state(trainer) -> tuple[dict, dict, int]:
    """(bytes this rank holds by kind, the formula's bytes by kind, its parameter count: its stage / tensor slice)."""
    n = sum(p.numel() for p in trainer.params)
    return trainer.memory(), memory_formula(n, trainer.cfg.zero, trainer.grid.replicas, trainer.cfg.optimizer), n


def model_state_line(trainer) -> str:
    """Bytes per rank of parameters, gradients and optimizer state measured after the first step, beside
    the formula (parallel/zero.py's ``memory_formula``), with what ZeRO-2/3 hold in flight."""
    cfg = trainer.cfg
    have, want, n = _model_state(trainer)
    parts = ", ".join(f"{k} {have[k] / 2**20:.2f} MiB (formula {want[k] / 2**20:.2f})" for k in want)
    total = f"total {sum(have[k] for k in want) / 2**20:.2f} MiB"
    if not cfg.zero:
        return f"model state per rank: {parts}; {total}"
    plain = memory_formula(n, 0, trainer.grid.replicas, cfg.optimizer)
    return (f"ZeRO-{cfg.zero} memory per rank: {parts}; {total} vs {sum(plain.values()) / 2**20:.2f} MiB without ZeRO"
            + (f"; one bucket in flight {have['bucket_in_flight'] / 2**20:.2f} MiB" if cfg.zero == 2 else "")
            + (f"; whole layers at once (running + prefetched, and the embeddings) "
               f"{have['live_layers'] / 2**20:.2f} MiB" if cfg.zero == 3 else ""))


def activation_formula(cfg, grid, micro: int, first: bool, last: bool, layers: int | None = None) -> float:
    """Bytes one micro-batch's forward through ``layers`` blocks (default: a stage's) keeps for backward
    on one rank, by the formula.

    Korthikanti et al.'s per-layer count (``ModelShape.layer_activation_bytes``)
    for this model: fp32 values (2 bytes under bf16/fp16, roughly: LayerNorm
    inputs stay fp32), no dropout, a fused attention kernel; plus the layers
    around the blocks on the first and last stage (``ends_activation_bytes``)."""
    shape, w = shape_of(cfg.model, cfg.cp), 4 if cfg.precision == "fp32" else 2
    layers = cfg.model.n_layer // grid.pp if layers is None else layers
    return (layers * shape.layer_activation_bytes(micro, grid.tp, cfg.sequence_parallel, cfg.recompute, w)
            + shape.ends_activation_bytes(micro, first, last, grid.tp, w, cfg.sequence_parallel))


def activation_line(trainer, grid, micro: int) -> str:
    """This rank's measured activation bytes per micro-batch beside the formula, and the schedule's peak."""
    pipe, cfg = trainer.pipeline, trainer.cfg
    chunk = trainer.stage.chunks[pipe.activation_chunk]
    want = activation_formula(cfg, grid, micro, chunk.first, chunk.last, len(chunk.blocks))
    have, live = pipe.activation_bytes, pipe.peak_in_flight(trainer.n_micro)
    what = "micro-batch" if cfg.virtual_stages == 1 else f"micro-batch through one of {cfg.virtual_stages} chunks"
    return (f"activations ({cfg.recompute} recompute, stage {grid.pp_rank}): measured {have / 2**20:.2f} MiB "
            f"per {what}, formula {want / 2**20:.2f} MiB ({100 * (have / want - 1):+.1f}%); at most {live} "
            f"in flight: {live * have / 2**20:.2f} MiB")


def formula_mib(trainer) -> float:
    """``Trainer._held_mib`` by the formulas: the same for every step once the first has measured the activations."""
    cfg, grid, pipe = trainer.cfg, trainer.grid, trainer.pipeline
    formula = sum(_model_state(trainer)[1].values())
    if pipe.activation_bytes:
        chunk = trainer.stage.chunks[pipe.activation_chunk]
        formula += pipe.peak_in_flight(trainer.n_micro) * activation_formula(
            cfg, grid, trainer.micro, chunk.first, chunk.last, len(chunk.blocks))
    return formula / 2**20
