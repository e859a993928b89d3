"""What cannot run, and what to change: every check of a TrainConfig before any work starts.

``validate(cfg, world)`` raises ValueError with the fix for the first problem; the messages name the flags
(README, "Which flags combine", lists the combinations refused and why).
"""
from __future__ import annotations

import math

from .comm import ALGORITHMS, ALLTOALL_ALGORITHMS, NODE_ALGORITHMS
from .costmodel.layout import context_problems, cut_problems, expert_problems
from .config import COMM_DTYPES, DEVICES, DP_MODES, ENGINES, OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, SYNCS


def validate(cfg, world: int) -> None:
    """Raise ValueError with the fix for anything that cannot run on ``world`` ranks."""
    finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)
    checks = [
        (finite(cfg.lr) and cfg.lr > 0, f"--lr {cfg.lr} must be a finite number > 0, e.g. --lr 3e-3"),
        (finite(cfg.min_lr) and cfg.min_lr >= 0, f"--min-lr {cfg.min_lr} must be a finite number >= 0"),
        (finite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"--weight-decay {cfg.weight_decay} must be a finite number >= 0 (0: no weight decay)"),
        (finite(cfg.grad_clip) and cfg.grad_clip >= 0,
         f"--grad-clip {cfg.grad_clip} must be a finite number >= 0 (0 turns clipping off)"),
        (finite(cfg.data_max_mb) and cfg.data_max_mb > 0, f"--data-max-mb {cfg.data_max_mb} must be > 0"),
        (cfg.steps >= 0, f"--steps {cfg.steps} must be >= 0"),
        (cfg.global_batch_size >= 1, "--global-batch-size must be >= 1"),
        (cfg.micro_batch_size is None or cfg.micro_batch_size >= 1, "--micro-batch-size must be >= 1"),
        (cfg.allreduce in ALGORITHMS, f"unknown --allreduce {cfg.allreduce!r}; valid: {', '.join(ALGORITHMS)}"),
        (cfg.engine in ENGINES, f"unknown --engine {cfg.engine!r}; valid: {', '.join(ENGINES)}"),
        (cfg.dp_sync in DP_MODES, f"unknown --dp-sync {cfg.dp_sync!r}; valid: {', '.join(DP_MODES)}"),
        (cfg.precision in PRECISIONS, f"unknown --precision {cfg.precision!r}; valid: {', '.join(PRECISIONS)}"),
        (cfg.comm_dtype in COMM_DTYPES, f"unknown --comm-dtype {cfg.comm_dtype!r}; valid: {', '.join(COMM_DTYPES)}"),
        (finite(cfg.bucket_mb) and cfg.bucket_mb > 0, f"--bucket-mb {cfg.bucket_mb} must be a finite number > 0 (MiB)"),
        (cfg.device in DEVICES, f"unknown --device {cfg.device!r}; valid: {', '.join(DEVICES)}"),
        (cfg.optimizer in OPTIMIZERS, f"unknown --optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"),
        (cfg.sync in SYNCS, f"unknown --sync {cfg.sync!r}; valid: {', '.join(SYNCS)}"),
        (cfg.sync != "ps" or 1 <= cfg.servers < world,
         f"--servers {cfg.servers} on {world} ranks leaves no worker: use 1..{world - 1} servers, or more ranks"),
        (cfg.staleness is None or cfg.staleness >= 0, f"--staleness {cfg.staleness} must be >= 0 (or inf)"),
        (cfg.straggler_ok(world), f"--straggler {cfg.straggler!r}: write RANK:FACTOR with 0 <= RANK < {world} "
                                   "and FACTOR >= 1, e.g. --straggler 1:3"),
        (cfg.schedule in SCHEDULES, f"unknown --schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}"),
        (cfg.zero in (0, 1, 2, 3), f"--zero {cfg.zero}: use 0 (off), 1 (optimizer state), 2 (and gradients) "
                                    "or 3 (and parameters)"),
        (cfg.recompute in RECOMPUTE, f"unknown --recompute {cfg.recompute!r}; valid: {', '.join(RECOMPUTE)}"),
        (cfg.virtual_stages >= 1, f"--virtual-stages {cfg.virtual_stages} must be >= 1"),
        (cfg.cp >= 1, f"--cp {cfg.cp} must be >= 1"),
        (cfg.cp <= 1 or (cfg.sync != "ps" and cfg.engine == "explicit" and not cfg.model.n_experts),
         "--cp runs with dp, tp, sequence parallelism, pp and ZeRO: not yet with --n-experts, --sync ps or "
         "--engine torch-ddp"),
        (not cfg.sequence_parallel or cfg.model.block_size % (cfg.tp * cfg.cp) == 0,
         f"--sequence-parallel gives each of the --tp {cfg.tp} ranks an equal part of the "
         f"{cfg.model.block_size // cfg.cp if cfg.cp > 1 else cfg.model.block_size} tokens"
         + (" a context rank holds" if cfg.cp > 1 else "")
         + f": use a --block-size that is a multiple of {cfg.tp * cfg.cp}"),
        (cfg.alltoall in ALLTOALL_ALGORITHMS,
         f"unknown --alltoall {cfg.alltoall!r}; valid: {', '.join(ALLTOALL_ALGORITHMS)}"),
    ] + _combinations(cfg) + _expert_combinations(cfg)
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    # how the model and its sequences may be cut, and its experts spread: as the predictor checks them
    cut = cut_problems(cfg.model.n_layer, cfg.model.n_head, cfg.tp, cfg.pp, cfg.virtual_stages,
                       cfg.sequence_parallel, cfg.model.kv_heads) + context_problems(cfg.model.block_size, cfg.cp, "--block-size")
    _refuse(cut)
    if cfg.sync == "ps":
        workers = cfg.data_ranks(world)
        if cfg.staleness != 0 and cfg.global_batch_size % workers:  # each worker's gradient applied alone
            raise ValueError(f"--global-batch-size {cfg.global_batch_size} is not divisible by the {workers} "
                             f"parameter-server workers, and an asynchronous server applies each worker's "
                             f"gradient alone: use a multiple of {workers} (or --staleness 0)")
        _refuse(expert_problems(cfg.model.n_experts, cfg.ep))
        cfg.per_rank(workers)
    else:
        grid = cfg.grid(world)
        _check_nodes(cfg, grid.replicas)
        _refuse(expert_problems(cfg.model.n_experts, cfg.ep, grid.replicas))
        m = cfg.model
        if m.vocab_size % grid.tp or (4 * m.n_embd) % grid.tp:
            raise ValueError(f"--tp {grid.tp} must divide the vocabulary ({m.vocab_size}) and the MLP width "
                             f"({4 * m.n_embd})")
        n_micro = cfg.per_rank(grid.dp)[2]
        if cfg.virtual_stages > 1:
            _check_interleaving(cfg, grid.pp, n_micro)
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but torch sees no CUDA device: install a CUDA build of torch "
                             "and pip install 'parallel_lm[gpu]' (CuPy) on a GPU machine, or use --device cpu")

def _check_interleaving(cfg, pp: int, n_micro: int) -> None:
    if n_micro % pp:  # a pipeline, and layers that divide into its chunks: cut_problems checked those
        raise ValueError(f"interleaved 1F1B runs the micro-batches in groups of --pp {pp}, but each data-parallel "
                         f"rank has {n_micro}: use --micro-batches (or --micro-batch-size) giving a multiple of {pp}")
    if cfg.schedule != "1f1b":
        raise ValueError(f"--virtual-stages runs the interleaved 1F1B schedule: drop --schedule {cfg.schedule}")

def _check_nodes(cfg, dp: int) -> None:
    """Emulated nodes (comm/nodes.py) must divide the data-parallel ranks the hierarchical all-reduce runs on."""
    from .comm.nodes import emulated_ranks_per_node, rails
    from .comm.settings import RAILS, RANKS_PER_NODE
    if cfg.allreduce not in NODE_ALGORITHMS:
        return
    per_node = emulated_ranks_per_node()
    if per_node is None:
        return
    if dp % per_node:
        raise ValueError(f"{RANKS_PER_NODE}={per_node} must be a positive divisor of the {dp} data-parallel ranks "
                         f"that --allreduce {cfg.allreduce} runs on: set it to one, or unset it to use the real nodes")
    try:
        rails(per_node)
    except ValueError as e:
        raise ValueError(f"{e}; unset {RAILS} for one ring per local rank") from None

def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError(problems[0])

def _expert_combinations(cfg) -> list[tuple[bool, str]]:
    """Mixture of experts and expert parallelism: what they run with (README, "Experts")."""
    moe, ep = cfg.model.n_experts > 0, cfg.ep
    return [
        (ep >= 1, f"--ep {ep} must be >= 1"),
        (not moe or (cfg.tp == cfg.pp == 1 and cfg.recompute != "full" and cfg.sync != "ps"),
         "--n-experts runs with data parallelism (and --ep, --zero 1/2): not yet with --tp, --pp, "
         "--recompute full or --sync ps"),
        (ep == 1 or (not cfg.zero and cfg.engine == "explicit" and cfg.dp_sync == "bucketed"),
         "--ep keeps each expert on its own ranks, so its gradients bypass the data-parallel sync: it runs "
         "with the bucketed explicit sync, without --zero or --engine torch-ddp"),
        (not moe or cfg.zero != 3, "--zero 3 gathers whole layers, and a mixture-of-experts layer runs its "
                                    "experts one by one: use --zero 1 or 2 with --n-experts"),
    ]

def _combinations(cfg) -> list[tuple[bool, str]]:
    """The flag combinations that cannot work, each with its reason (README, "Which flags combine")."""
    ps = cfg.sync == "ps"
    return [
        (not ps or (cfg.tp == cfg.pp == 1 and not cfg.zero and cfg.engine == "explicit"),
         "--sync ps shards the whole model over the server ranks and updates it there: it runs without "
         "--tp, --pp, --zero and --engine torch-ddp"),
        (ps or cfg.ps_updates is None, "--ps-updates is an update budget for --sync ps"),
        (cfg.ps_updates is None or cfg.ps_updates >= 1, f"--ps-updates {cfg.ps_updates} must be >= 1"),
        (cfg.engine == "explicit" or cfg.pp == 1,
         "--engine torch-ddp with --pp > 1: DDP all-reduces in the backward that follows a synchronizing "
         "forward, and a pipeline schedule runs other micro-batches' backwards in between; use --engine explicit"),
        (cfg.engine == "explicit" or not cfg.zero,
         "--zero reduce-scatters gradients into shards itself, while torch DDP all-reduces them whole: "
         "use --engine explicit"),
        (cfg.dp_sync == "bucketed" or not cfg.zero, "--zero reduce-scatters its own buckets: drop --dp-sync naive"),
    ]
