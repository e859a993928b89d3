"""The options of ``python -m parallel_lm.train``: units, ranges, and what 0 means, in one place."""
from __future__ import annotations

import click

from .comm import ALGORITHMS, ALLTOALL_ALGORITHMS
from .config import COMM_DTYPES, DEVICES, DP_MODES, ENGINES, OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, SYNCS
from .model import PRESETS
from .shrink import MODES
from .watchdog import DEFAULT_TIMEOUT


def _staleness(text: str) -> int | None:
    if str(text).strip().lower() in ("inf", "none", "async"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a whole number of steps >= 0, or inf") from None
    if value < 0:
        raise click.BadParameter(f"{value} must be >= 0 (or inf)")
    return value


OPTIONS = [
    click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny",
                 help="Model size: tiny 0.12M, small 0.84M, medium 10.8M, gpt2 86M parameters."),
    click.option("--n-layer", type=click.IntRange(min=1), help="Override the preset's transformer blocks (>= 1)."),
    click.option("--n-head", type=click.IntRange(min=1), help="Override the preset's attention heads (>= 1, dividing --n-embd)."),
    click.option("--n-embd", type=click.IntRange(min=1), help="Override the preset's width (channels, >= 1)."),
    click.option("--block-size", type=click.IntRange(min=1), help="Override the preset's context length (bytes, >= 1; "
                 "memory grows with it: checked before training)."),
    click.option("--n-experts", type=click.IntRange(min=0), help="Make each block's MLP a mixture of this many "
                 "experts with a top-k router (0 or unset: the preset's dense MLP)."),
    click.option("--top-k", type=click.IntRange(min=1), help="Experts per token (1..--n-experts; default 1)."),
    click.option("--capacity-factor", type=float, help="Assignments an expert takes per sequence, as a multiple of "
                 "T x k / E; the rest are dropped and counted (0: no limit; default 1.25)."),
    click.option("--aux-loss-coef", type=float, help="Weight of the experts' load-balancing loss (default 0.01)."),
    click.option("--steps", default=200, type=click.IntRange(min=0), help="Optimizer step to reach (0: only evaluate)."),
    click.option("--global-batch-size", default=32, type=click.IntRange(min=1), help="Sequences per step, summed over ranks."),
    click.option("--micro-batch-size", type=click.IntRange(min=1), help="Sequences per forward/backward (gradient accumulation below the per-rank share)."),
    click.option("--micro-batches", type=click.IntRange(min=1), help="Split each data-parallel rank's share into m micro-batches (what a pipeline fills itself with)."),
    click.option("--schedule", type=click.Choice(SCHEDULES), default="1f1b", help="Pipeline schedule (--pp > 1): gpipe (all forwards, then all backwards) or 1f1b."),
    click.option("--seed", default=1337, type=int, help="Seed of the initial weights and of every batch: the same seed "
                 "trains the same run on any rank count."),
    click.option("--data", default="stdlib", help="'stdlib' (the Python standard library's source), 'synthetic', or a file/folder."),
    click.option("--data-max-mb", default=8.0, type=click.FloatRange(min=0.001), help="Read at most this many MiB of the corpus (> 0)."),
    click.option("--lr", default=3e-3, type=float, help="Peak learning rate (a finite number > 0)."),
    click.option("--min-lr", default=3e-4, type=float, help="Learning rate at the end of the cosine decay (>= 0)."),
    click.option("--warmup-steps", default=10, type=click.IntRange(min=0),
                 help="Steps of linear warm-up to --lr (0: start at --lr)."),
    click.option("--decay-steps", default=0, type=click.IntRange(min=0), help="Cosine decay length after warm-up (0: constant)."),
    click.option("--weight-decay", default=0.1, type=float, help="Weight decay of matrices and embeddings (>= 0; 0: "
                 "none): decoupled with AdamW, L2 with SGD; biases and LayerNorm gains never decay."),
    click.option("--grad-clip", default=1.0, type=float,
                 help="Clip the global gradient norm to this (>= 0; 0: no clipping)."),
    click.option("--allreduce", default="ring", help=f"Gradient all-reduce algorithm: {', '.join(ALGORITHMS)}."),
    click.option("--engine", type=click.Choice(ENGINES), default="explicit", help="explicit: our collectives; torch-ddp: torch DistributedDataParallel (gloo; not with --pp > 1 or --zero)."),
    click.option("--dp-sync", type=click.Choice(DP_MODES), default="bucketed", help="bucketed: flat buckets; naive: one all-reduce per parameter."),
    click.option("--dp", type=click.IntRange(min=1), help="Data-parallel degree (default: ranks / (tp x pp))."),
    click.option("--ep", default=1, type=click.IntRange(min=1), help="Expert parallelism: spread each block's experts over groups of "
                 "this many data-parallel ranks, tokens carried by all-to-all (must divide --n-experts and dp)."),
    click.option("--alltoall", default="pairwise", help=f"All-to-all algorithm for --ep: {', '.join(ALLTOALL_ALGORITHMS)}."),
    click.option("--tp", default=1, type=click.IntRange(min=1), help="Tensor-parallel degree (splits heads, MLP and vocabulary)."),
    click.option("--cp", default=1, type=click.IntRange(min=1), help="Context parallelism: cut every sequence over this many ranks "
                 "(ring attention; each takes an early and a late chunk of 2 x cp); --block-size must be a multiple "
                 "of 2 x cp. Ranks = dp x cp x tp x pp."),
    click.option("--sequence-parallel", is_flag=True, help="With --tp: cut the activations between the "
                 "tensor-parallel regions (LayerNorms, residuals) along the sequence; all-gather and reduce-scatter "
                 "replace the all-reduces (needs a --block-size divisible by tp)."),
    click.option("--pp", default=1, type=click.IntRange(min=1), help="Pipeline stages (split the layers)."),
    click.option("--virtual-stages", default=1, type=click.IntRange(min=1), help="Interleaved 1F1B: each pipeline "
                 "rank holds v chunks of layers, dividing the bubble by v (needs --pp > 1, layers divisible by pp x v, "
                 "micro-batches a multiple of pp)."),
    click.option("--zero", default=0, type=click.IntRange(0, 3), help="ZeRO stage: shard optimizer state (1), "
                 "gradients (2) and parameters (3, gathered layer by layer) over data-parallel ranks (--engine explicit)."),
    click.option("--recompute", type=click.Choice(RECOMPUTE), default="none", help="Activation recomputation: "
                 "selective (the attention core) or full (each block keeps only its input, recomputed in backward)."),
    click.option("--bucket-mb", default=25.0, type=float,
                 help="Gradient bucket size in MiB (> 0; explicit, ZeRO and torch-ddp)."),
    click.option("--overlap/--no-overlap", default=True, help="All-reduce buckets during backward, or all after it."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", help="Autocast dtype of forward/backward; fp16 adds dynamic loss scaling."),
    click.option("--comm-dtype", type=click.Choice(COMM_DTYPES), default="fp32", help="Send gradients as fp16 (half the bytes)."),
    click.option("--device", type=click.Choice(DEVICES), default="cpu", help="cuda: model on this rank's GPU (rank % GPUs), buckets all-reduced as CuPy arrays."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", help="AdamW (betas 0.9, 0.95) or plain SGD."),
    click.option("--sync", type=click.Choice(SYNCS), default="allreduce", help="allreduce: data parallel; ps: parameter server."),
    click.option("--servers", default=1, type=click.IntRange(min=1),
                 help="--sync ps: ranks 0..N-1 are servers (1 <= N < ranks), the rest workers."),
    click.option("--staleness", default="0", callback=lambda ctx, param, v: _staleness(v),
                 help="--sync ps: 0 synchronous; s: a worker may run s steps ahead of the slowest; inf: fully asynchronous."),
    click.option("--ps-updates", type=click.IntRange(min=1), help="--sync ps: end the job after N applied updates, "
                 "whoever made them (asynchronous: one per pushed gradient; synchronous: one per step), "
                 "at the latest at --steps."),
    click.option("--straggler", help="RANK:FACTOR: that rank computes FACTOR (>= 1) times slower (e.g. 2:3)."),
    click.option("--eval-every", default=50, type=click.IntRange(min=0), help="Validation loss every N steps (0: only at the end)."),
    click.option("--eval-batches", default=4, type=click.IntRange(min=1),
                 help="Validation batches of --global-batch-size sequences per evaluation (>= 1)."),
    click.option("--ckpt-every", default=0, type=click.IntRange(min=0), help="Also checkpoint every N steps (0: only at the end)."),
    click.option("--out", type=click.Path(file_okay=False), help="Folder for metrics.jsonl, checkpoint.pt and trace.json."),
    click.option("--keep-checkpoints", default=1, type=click.IntRange(min=1), help="Keep the newest K checkpoints "
                 "(OUT/checkpoint-STEP.pt, checkpoint.pt linking the newest); --resume falls back to an older intact "
                 "one when the newest is damaged."),
    click.option("--resume", type=click.Path(file_okay=False), help="Continue from this folder's checkpoint.pt."),
    click.option("--tensorboard", is_flag=True, help="Also write TensorBoard scalars (loss, lr, tokens/s, step and "
                 "communication time, val loss, loss scale, bubble, memory) to OUT/tb; view with tensorboard --logdir."),
    click.option("--trace", is_flag=True, help="Write a Chrome trace (one track per rank) to OUT/trace.json."),
    click.option("--threads", type=click.IntRange(min=1), help="torch threads per rank (>= 1; default: cores / ranks on the node)."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
    click.option("--predict", "predict_profile", metavar="PROFILE",
                 help="At the end, print the cost model's step and communication times for this run beside the "
                 "measured ones (PROFILE: this machine calibrated with python -m parallel_lm.calibrate, best with the "
                 "same rank count; also a shipped name or alpha=S,beta=S_PER_B); with --out, also OUT/prediction.json."),
    click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), help="The device's peak TFLOP/s per "
                 "rank for MFU/HFU (a datasheet figure, e.g. 989 for an H100's bf16); default: an fp32 matmul timed "
                 "on this node, shared by its ranks."),
    click.option("--on-failure", type=click.Choice(MODES), default="abort", help="When a rank dies: abort the job "
                 "(restart it with python -m parallel_lm.elastic), or shrink: the survivors go on without it (needs "
                 "Open MPI launched with mpirun --with-ft ulfm)."),
    click.option("--timeout", default=DEFAULT_TIMEOUT, type=click.FloatRange(min=0), help="Hang watchdog: a rank that makes no "
                 "progress for this many seconds (stopped, stuck in I/O, deadlocked) ends the job, named (0: off)."),
    click.option("--force", is_flag=True, help="Train even when the memory estimate says the run cannot fit."),
    click.option("--netem", metavar="PROFILE", help="Delay every gradient message like this network (a profile name or file, "
                 "or alpha=S,beta=S_PER_B): one machine behaves like a cluster. Explicit engine, --sync allreduce only."),
]


def train_options(f):
    """Apply every train option to the command ``f``, in --help order."""
    for option in reversed(OPTIONS):
        f = option(f)
    return f
