"""The resolved configuration of a training run, checked before any work starts."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .comm import ALGORITHMS, ALLTOALL_ALGORITHMS
from .model import GPTConfig

PRECISIONS = ("fp32", "bf16", "fp16")
COMM_DTYPES = ("fp32", "fp16")
ENGINES = ("explicit", "torch-ddp")
DP_MODES = ("bucketed", "naive")
DEVICES = ("cpu", "cuda")
OPTIMIZERS = ("adamw", "sgd")
SYNCS = ("allreduce", "ps")
SCHEDULES = ("1f1b", "gpipe")
RECOMPUTE = ("none", "selective", "full")


@dataclass
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    steps: int = 200
    global_batch_size: int = 32
    micro_batch_size: int | None = None  # None: the whole per-rank share at once
    micro_batches: int | None = None  # --micro-batches m: the per-rank share in m micro-batches (pipelines)
    schedule: str = "1f1b"  # pipeline schedule: gpipe or 1f1b
    seed: int = 1337
    data: str = "stdlib"
    data_max_mb: float = 8.0
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 10
    decay_steps: int = 0  # 0: constant lr after warm-up; else cosine to min_lr over this many steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    allreduce: str = "ring"
    engine: str = "explicit"
    dp_sync: str = "bucketed"  # --dp-sync: flat buckets, or one all-reduce per parameter
    bucket_mb: float = 25.0
    overlap: bool = True
    precision: str = "fp32"
    comm_dtype: str = "fp32"
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 0  # 0: only at the end
    device: str = "cpu"  # "cuda": model on the GPU, gradient buckets all-reduced as CuPy arrays
    optimizer: str = "adamw"
    sync: str = "allreduce"  # or "ps": parameter server
    servers: int = 1  # --sync ps: ranks 0..servers-1 serve, the rest work
    staleness: int | None = 0  # --sync ps: 0 synchronous, s >= 1 bounded, None unbounded (fully async)
    ps_updates: int | None = None  # --sync ps: end after this many applied updates (None: run --steps)
    straggler: str | None = None  # "RANK:FACTOR": that rank computes FACTOR times slower
    dp: int | None = None  # data-parallel degree; None: world / (tp x pp)
    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline stages
    zero: int = 0  # ZeRO stage: 0 off, 1 optimizer state, 2 and gradients, 3 and parameters
    virtual_stages: int = 1  # --virtual-stages v: each pipeline rank holds v chunks of layers (interleaved 1F1B)
    recompute: str = "none"  # activation recomputation: none, selective (attention core) or full (each block)
    cp: int = 1  # context-parallel degree: each sequence cut over cp ranks (within the data-parallel ranks)
    sequence_parallel: bool = False  # tp > 1: activations between the tensor-parallel regions cut along the sequence
    ep: int = 1  # expert-parallel degree: each mixture-of-experts block's experts spread over groups of ep dp ranks
    alltoall: str = "pairwise"  # the all-to-all algorithm that carries tokens to their experts (--ep > 1)

    def _straggler(self) -> tuple[int, float] | None:
        """(rank, factor) from "RANK:FACTOR", None when unset; ValueError when malformed."""
        if not self.straggler:
            return None
        who, factor = self.straggler.split(":")
        return int(who), float(factor)

    def straggler_factor(self, rank: int) -> float:
        parsed = self._straggler()
        return parsed[1] if parsed and parsed[0] == rank else 1.0

    def data_ranks(self, world: int) -> int:
        """Ranks that compute gradients: all of them, or the workers under a parameter server."""
        return world - self.servers if self.sync == "ps" else world

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = GPTConfig(**d["model"])
        if isinstance(d.get("dp"), str):  # checkpoints from before --dp-sync took over the name
            d["dp_sync"] = d.pop("dp")
        return cls(**d)

    def grid(self, world: int, rank: int = 0):
        """The dp x tp x pp grid on ``world`` ranks (ValueError naming the fix when it does not fit).

        With --cp, the grid's dp counts every replica of the model: dp x cp, each group of cp consecutive
        ones sharing sequences (``batch_ranks``)."""
        from .parallel.grid import Grid
        if self.cp > 1 and (world // (self.tp * self.pp)) % self.cp:
            raise ValueError(f"--cp {self.cp} must divide the {world // (self.tp * self.pp)} ranks left after "
                             f"--tp {self.tp} x --pp {self.pp}: run a multiple of {self.cp * self.tp * self.pp} ranks")
        return Grid.for_world(world, rank, self.dp * self.cp if self.dp else None, self.tp, self.pp)

    def batch_ranks(self, replicas: int) -> int:
        """How many ways the batch is cut among ``replicas`` data-parallel ranks: each context-parallel group
        of cp ranks shares its sequences."""
        return replicas // self.cp

    def straggler_ok(self, world: int) -> bool:
        try:
            parsed = self._straggler()
        except ValueError:
            return False
        return parsed is None or (0 <= parsed[0] < world and parsed[1] >= 1)

    def rows_of(self, world: int, rank: int) -> tuple[int, int]:
        """(first row, rows) of data-parallel rank ``rank``'s share of the global batch: B // K each, and one
        more for the first B % K ranks when B does not divide (their gradients are weighted by their rows)."""
        base, extra = divmod(self.global_batch_size, world)
        return rank * base + min(rank, extra), base + (rank < extra)

    def micro_rows(self, world: int, rank: int = 0) -> list[int]:
        """Rows of each of rank ``rank``'s micro-batches (the same count on every rank), or ValueError naming the fix."""
        B = self.global_batch_size
        if B < world:
            raise ValueError(f"--global-batch-size {B} is smaller than the {world} data-parallel ranks: each rank "
                             f"needs at least one sequence; use at least {world}")
        rows = self.rows_of(world, rank)[1]
        if self.micro_batches and self.micro_batch_size:
            raise ValueError("give --micro-batches or --micro-batch-size, not both")
        if self.micro_batch_size:
            micro = self.micro_batch_size
            if B % world:
                raise ValueError(f"--global-batch-size {B} does not divide over {world} data-parallel ranks, so they "
                                 f"hold {B // world} or {B // world + 1} sequences: split them with --micro-batches "
                                 "(the same count on every rank) instead of --micro-batch-size, or use a multiple "
                                 f"of {world}")
            if rows % micro:
                raise ValueError(f"--global-batch-size {B} is not divisible by {world} data-parallel ranks x "
                                 f"micro-batch {micro}: each rank's {rows} rows must split into whole micro-batches")
            return [micro] * (rows // micro)
        m = self.micro_batches or 1
        if B // world < m:
            raise ValueError(f"--micro-batches {m} needs at least {m} sequences on each of the {world} data-parallel "
                             f"ranks, but {'some hold' if B % world else 'each holds'} {B // world}: use fewer "
                             "micro-batches or a larger --global-batch-size")
        return [rows // m + (i < rows % m) for i in range(m)]  # nearly equal when m does not divide the rows

    def per_rank(self, world: int, rank: int = 0) -> tuple[int, int, int]:
        """(rows of rank ``rank``, its largest micro-batch, micro-batches per step), or ValueError naming the fix."""
        sizes = self.micro_rows(world, rank)
        return sum(sizes), max(sizes), len(sizes)

    def validate(self, world: int) -> None:
        """Raise ValueError with the fix for anything that cannot run on ``world`` ranks."""
        finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)
        checks = [
            (finite(self.lr) and self.lr > 0, f"--lr {self.lr} must be a finite number > 0, e.g. --lr 3e-3"),
            (finite(self.min_lr) and self.min_lr >= 0, f"--min-lr {self.min_lr} must be a finite number >= 0"),
            (finite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay {self.weight_decay} must be a finite number >= 0 (0: no weight decay)"),
            (finite(self.grad_clip) and self.grad_clip >= 0,
             f"--grad-clip {self.grad_clip} must be a finite number >= 0 (0 turns clipping off)"),
            (finite(self.data_max_mb) and self.data_max_mb > 0, f"--data-max-mb {self.data_max_mb} must be > 0"),
            (self.steps >= 0, f"--steps {self.steps} must be >= 0"),
            (self.global_batch_size >= 1, "--global-batch-size must be >= 1"),
            (self.micro_batch_size is None or self.micro_batch_size >= 1, "--micro-batch-size must be >= 1"),
            (self.allreduce in ALGORITHMS, f"unknown --allreduce {self.allreduce!r}; valid: {', '.join(ALGORITHMS)}"),
            (self.engine in ENGINES, f"unknown --engine {self.engine!r}; valid: {', '.join(ENGINES)}"),
            (self.dp_sync in DP_MODES, f"unknown --dp-sync {self.dp_sync!r}; valid: {', '.join(DP_MODES)}"),
            (self.precision in PRECISIONS, f"unknown --precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (self.comm_dtype in COMM_DTYPES, f"unknown --comm-dtype {self.comm_dtype!r}; valid: {', '.join(COMM_DTYPES)}"),
            (finite(self.bucket_mb) and self.bucket_mb > 0, f"--bucket-mb {self.bucket_mb} must be a finite number > 0 (MiB)"),
            (self.device in DEVICES, f"unknown --device {self.device!r}; valid: {', '.join(DEVICES)}"),
            (self.optimizer in OPTIMIZERS, f"unknown --optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"),
            (self.sync in SYNCS, f"unknown --sync {self.sync!r}; valid: {', '.join(SYNCS)}"),
            (self.sync != "ps" or 1 <= self.servers < world,
             f"--servers {self.servers} on {world} ranks leaves no worker: use 1..{world - 1} servers, or more ranks"),
            (self.staleness is None or self.staleness >= 0, f"--staleness {self.staleness} must be >= 0 (or inf)"),
            (self.straggler_ok(world), f"--straggler {self.straggler!r}: write RANK:FACTOR with 0 <= RANK < {world} "
                                       "and FACTOR >= 1, e.g. --straggler 1:3"),
            (self.schedule in SCHEDULES, f"unknown --schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (self.zero in (0, 1, 2, 3), f"--zero {self.zero}: use 0 (off), 1 (optimizer state), 2 (and gradients) "
                                        "or 3 (and parameters)"),
            (self.recompute in RECOMPUTE, f"unknown --recompute {self.recompute!r}; valid: {', '.join(RECOMPUTE)}"),
            (self.virtual_stages >= 1, f"--virtual-stages {self.virtual_stages} must be >= 1"),
            (self.cp >= 1, f"--cp {self.cp} must be >= 1"),
            (self.cp <= 1 or self.model.block_size % (2 * self.cp) == 0,
             f"--cp {self.cp} cuts each sequence into 2 x {self.cp} = {2 * self.cp} equal chunks (an early and a late "
             f"one per rank, for causal balance): use a --block-size that is a multiple of {2 * self.cp}"),
            (self.cp <= 1 or (not self.sequence_parallel and self.sync != "ps" and self.engine == "explicit"
                              and not self.model.n_experts),
             "--cp runs with dp, tp, pp and ZeRO: not yet with --sequence-parallel, --n-experts, --sync ps or "
             "--engine torch-ddp"),
            (not self.sequence_parallel or self.tp > 1,
             "--sequence-parallel cuts the activations along the sequence over the tensor-parallel ranks: "
             "use it with --tp 2 or more"),
            (not self.sequence_parallel or self.model.block_size % self.tp == 0,
             f"--sequence-parallel gives each of the --tp {self.tp} ranks an equal part of the "
             f"{self.model.block_size} tokens: use a --block-size that is a multiple of {self.tp}"),
            (self.alltoall in ALLTOALL_ALGORITHMS,
             f"unknown --alltoall {self.alltoall!r}; valid: {', '.join(ALLTOALL_ALGORITHMS)}"),
        ] + self._combinations() + self._expert_combinations()
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.sync == "ps":
            workers = self.data_ranks(world)
            if self.staleness != 0 and self.global_batch_size % workers:  # each worker's gradient applied alone
                raise ValueError(f"--global-batch-size {self.global_batch_size} is not divisible by the {workers} "
                                 f"parameter-server workers, and an asynchronous server applies each worker's "
                                 f"gradient alone: use a multiple of {workers} (or --staleness 0)")
            self.per_rank(workers)
        else:
            grid = self.grid(world)
            self._check_nodes(grid.dp)
            self._check_experts(grid.dp)
            grid.check_model(self.model.n_layer, self.model.n_head, self.model.n_embd, self.model.vocab_size)
            n_micro = self.per_rank(self.batch_ranks(grid.dp))[2]
            if self.virtual_stages > 1:
                self._check_interleaving(grid.pp, n_micro)
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise ValueError("--device cuda but torch sees no CUDA device: install a CUDA build of torch "
                                 "and pip install 'parallel_lm[gpu]' (CuPy) on a GPU machine, or use --device cpu")

    def _check_interleaving(self, pp: int, n_micro: int) -> None:
        v, layers = self.virtual_stages, self.model.n_layer
        if pp == 1:
            raise ValueError(f"--virtual-stages {v} cuts each pipeline rank's layers into chunks: it needs --pp 2 "
                             "or more")
        if layers % (pp * v):
            raise ValueError(f"--n-layer {layers} is not divisible by --pp {pp} x --virtual-stages {v}: each of the "
                             f"{pp * v} chunks holds the same number of layers; use a layer count that is a multiple "
                             f"of {pp * v}, or fewer virtual stages")
        if n_micro % pp:
            raise ValueError(f"interleaved 1F1B runs the micro-batches in groups of --pp {pp}, but each data-parallel "
                             f"rank has {n_micro}: use --micro-batches (or --micro-batch-size) giving a multiple of {pp}")
        if self.schedule != "1f1b":
            raise ValueError(f"--virtual-stages runs the interleaved 1F1B schedule: drop --schedule {self.schedule}")

    def _check_nodes(self, dp: int) -> None:
        """Emulated nodes (comm/nodes.py) must divide the data-parallel ranks the hierarchical all-reduce runs on."""
        from .comm.nodes import RAILS, RANKS_PER_NODE, emulated_ranks_per_node, rails
        if self.allreduce != "hierarchical":
            return
        per_node = emulated_ranks_per_node()
        if per_node is None:
            return
        if dp % per_node:
            raise ValueError(f"{RANKS_PER_NODE}={per_node} must be a positive divisor of the {dp} data-parallel ranks "
                             "that --allreduce hierarchical runs on: set it to one, or unset it to use the real nodes")
        try:
            rails(per_node)
        except ValueError as e:
            raise ValueError(f"{e}; unset {RAILS} for one ring per local rank") from None

    def _check_experts(self, dp: int) -> None:
        E, ep = self.model.n_experts, self.ep
        if ep > 1 and E % ep:
            divisors = ", ".join(str(d) for d in range(1, E + 1) if E % d == 0)
            raise ValueError(f"--ep {ep} must divide --n-experts {E}: each rank of an expert group holds the same "
                             f"number of experts; use --ep among {divisors}")
        if dp % ep:
            raise ValueError(f"--ep {ep} must divide the {dp} data-parallel ranks, which it cuts into expert groups "
                             f"of {ep}: run a multiple of {ep} data-parallel ranks, or change --ep")

    def _expert_combinations(self) -> list[tuple[bool, str]]:
        """Mixture of experts and expert parallelism: what they run with (README, "Experts")."""
        moe, ep = self.model.n_experts > 0, self.ep
        return [
            (ep >= 1, f"--ep {ep} must be >= 1"),
            (ep == 1 or moe, f"--ep {ep} spreads experts over ranks: give the model experts with --n-experts E"),
            (not moe or (self.tp == self.pp == 1 and self.recompute != "full" and self.sync != "ps"),
             "--n-experts runs with data parallelism (and --ep, --zero 1/2): not yet with --tp, --pp, "
             "--recompute full or --sync ps"),
            (ep == 1 or (not self.zero and self.engine == "explicit" and self.dp_sync == "bucketed"),
             "--ep keeps each expert on its own ranks, so its gradients bypass the data-parallel sync: it runs "
             "with the bucketed explicit sync, without --zero or --engine torch-ddp"),
            (not moe or self.zero != 3, "--zero 3 gathers whole layers, and a mixture-of-experts layer runs its "
                                        "experts one by one: use --zero 1 or 2 with --n-experts"),
        ]

    def _combinations(self) -> list[tuple[bool, str]]:
        """The flag combinations that cannot work, each with its reason (README, "Which flags combine")."""
        ps = self.sync == "ps"
        return [
            (not ps or (self.tp == self.pp == 1 and not self.zero and self.engine == "explicit"),
             "--sync ps shards the whole model over the server ranks and updates it there: it runs without "
             "--tp, --pp, --zero and --engine torch-ddp"),
            (ps or self.ps_updates is None, "--ps-updates is an update budget for --sync ps"),
            (self.ps_updates is None or self.ps_updates >= 1, f"--ps-updates {self.ps_updates} must be >= 1"),
            (self.engine == "explicit" or self.pp == 1,
             "--engine torch-ddp with --pp > 1: DDP all-reduces in the backward that follows a synchronizing "
             "forward, and a pipeline schedule runs other micro-batches' backwards in between; use --engine explicit"),
            (self.engine == "explicit" or not self.zero,
             "--zero reduce-scatters gradients into shards itself, while torch DDP all-reduces them whole: "
             "use --engine explicit"),
            (self.dp_sync == "bucketed" or not self.zero, "--zero reduce-scatters its own buckets: drop --dp-sync naive"),
        ]
