"""The description of a training run: every field with its flag (train_flags.py makes the options from them);
config_checks.py says what cannot run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

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


def flag(default, help: str, *, lo=None, hi=None, lo_open=False, choices=None, parse=None, folder=False,
         layout=False):
    """A field with its command-line flag: ``--NAME`` (the field's name with dashes), its default, its help, and
    its range (``lo``..``hi``) or ``choices``; ``parse``: text -> value (ValueError names the fix); ``folder``: a
    folder's path; ``layout``: how to run, not what to train (never taken from a checkpoint on --resume).
    train_flags.py makes the options."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices,
                                            "parse": parse, "folder": folder, "layout": layout})


def parse_staleness(text) -> int | None:
    """--staleness: a whole number of steps >= 0, or inf (None: unbounded)."""
    if str(text).strip().lower() in ("inf", "none", "async"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r}: give a whole number of steps >= 0, or inf") from None
    if value < 0:
        raise ValueError(f"{value} must be >= 0 (or inf)")
    return value


@dataclass
class TrainConfig:
    """One run: what to train and how to lay it out. Each field is also a flag of python -m parallel_lm.train."""
    model: GPTConfig = field(default_factory=GPTConfig)
    steps: int = flag(200, "Optimizer step to reach (0: only evaluate).", lo=0)
    global_batch_size: int = flag(32, "Sequences per step, summed over ranks.", lo=1)
    micro_batch_size: int | None = flag(None, "Sequences per forward/backward (gradient accumulation below the "
                                        "per-rank share); default: the whole share at once.", lo=1)
    micro_batches: int | None = flag(None, "Split each data-parallel rank's share into m micro-batches (what a "
                                     "pipeline fills itself with).", lo=1)
    schedule: str = flag("1f1b", "Pipeline schedule (--pp > 1): gpipe (all forwards, then all backwards) or 1f1b.",
                         choices=SCHEDULES)
    seed: int = flag(1337, "Seed of the initial weights and of every batch: the same seed trains the same run on "
                     "any rank count.")
    data: str = flag("stdlib", "'stdlib' (the Python standard library's source), 'synthetic', or a file/folder.")
    data_max_mb: float = flag(8.0, "Read at most this many MiB of the corpus (> 0).", lo=0.001)
    lr: float = flag(3e-3, "Peak learning rate (a finite number > 0).")
    min_lr: float = flag(3e-4, "Learning rate at the end of the cosine decay (>= 0).")
    warmup_steps: int = flag(10, "Steps of linear warm-up to --lr (0: start at --lr).", lo=0)
    decay_steps: int = flag(0, "Cosine decay length after warm-up (0: constant).", lo=0)
    weight_decay: float = flag(0.1, "Weight decay of matrices and embeddings (>= 0; 0: none): decoupled with AdamW, "
                               "L2 with SGD; biases and LayerNorm gains never decay.")
    grad_clip: float = flag(1.0, "Clip the global gradient norm to this (>= 0; 0: no clipping).")
    allreduce: str = flag("ring", f"Gradient all-reduce algorithm: {', '.join(ALGORITHMS)}.")
    engine: str = flag("explicit", "explicit: our collectives; torch-ddp: torch DistributedDataParallel (gloo; not "
                       "with --pp > 1 or --zero).", choices=ENGINES)
    dp_sync: str = flag("bucketed", "bucketed: flat buckets; naive: one all-reduce per parameter.", choices=DP_MODES)
    bucket_mb: float = flag(25.0, "Gradient bucket size in MiB (> 0; explicit, ZeRO and torch-ddp).")
    overlap: bool = flag(True, "All-reduce buckets during backward, or all after it.")
    precision: str = flag("fp32", "Autocast dtype of forward/backward; fp16 adds dynamic loss scaling.",
                          choices=PRECISIONS)
    comm_dtype: str = flag("fp32", "Send gradients as fp16 (half the bytes).", choices=COMM_DTYPES)
    eval_every: int = flag(50, "Validation loss every N steps (0: only at the end).", lo=0)
    eval_batches: int = flag(4, "Validation batches of --global-batch-size sequences per evaluation (>= 1).", lo=1)
    ckpt_every: int = flag(0, "Also checkpoint every N steps (0: only at the end).", lo=0)
    device: str = flag("cpu", "cuda: model on this rank's GPU (rank % GPUs), buckets all-reduced as CuPy arrays.",
                       choices=DEVICES)
    optimizer: str = flag("adamw", "AdamW (betas 0.9, 0.95) or plain SGD.", choices=OPTIMIZERS)
    sync: str = flag("allreduce", "allreduce: data parallel; ps: parameter server.", choices=SYNCS)
    servers: int = flag(1, "--sync ps: ranks 0..N-1 are servers (1 <= N < ranks), the rest workers.", lo=1)
    staleness: int | None = flag(0, "--sync ps: 0 synchronous; s: a worker may run s steps ahead of the slowest; "
                                 "inf: fully asynchronous.", parse=parse_staleness)
    ps_updates: int | None = flag(None, "--sync ps: end the job after N applied updates, whoever made them "
                                  "(asynchronous: one per pushed gradient; synchronous: one per step), at the latest "
                                  "at --steps.", lo=1)
    straggler: str | None = flag(None, "RANK:FACTOR: that rank computes FACTOR (>= 1) times slower (e.g. 2:3).")
    dp: int | None = flag(None, "Data-parallel degree (default: ranks / (cp x tp x pp)).", lo=1, layout=True)
    tp: int = flag(1, "Tensor-parallel degree (splits heads, MLP and vocabulary).", lo=1, layout=True)
    pp: int = flag(1, "Pipeline stages (split the layers).", lo=1, layout=True)
    zero: int = flag(0, "ZeRO stage: shard optimizer state (1), gradients (2) and parameters (3, gathered layer by "
                     "layer) over data-parallel ranks (--engine explicit).", lo=0, hi=3, layout=True)
    virtual_stages: int = flag(1, "Interleaved 1F1B: each pipeline rank holds v chunks of layers, dividing the bubble "
                               "by v (needs --pp > 1, layers divisible by pp x v, micro-batches a multiple of pp).",
                               lo=1, layout=True)
    recompute: str = flag("none", "Activation recomputation: selective (the attention core) or full (each block "
                          "keeps only its input, recomputed in backward).", choices=RECOMPUTE, layout=True)
    cp: int = flag(1, "Context parallelism: cut every sequence over this many ranks (ring attention; each takes an "
                   "early and a late chunk of 2 x cp); --block-size must be a multiple of 2 x cp. Ranks = dp x cp x "
                   "tp x pp.", lo=1, layout=True)
    sequence_parallel: bool = flag(False, "With --tp: cut the activations between the tensor-parallel regions "
                                   "(LayerNorms, residuals) along the sequence; all-gather and reduce-scatter replace "
                                   "the all-reduces (needs a --block-size divisible by tp).", layout=True)
    ep: int = flag(1, "Expert parallelism: spread each block's experts over groups of this many data-parallel ranks, "
                   "tokens carried by all-to-all (must divide --n-experts and dp).", lo=1, layout=True)
    alltoall: str = flag("pairwise", f"All-to-all algorithm for --ep: {', '.join(ALLTOALL_ALGORITHMS)}.")

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
        """The dp x cp x tp x pp grid on ``world`` ranks (ValueError naming the fix when it does not fit)."""
        from .parallel.grid import Grid
        return Grid.for_world(world, rank, self.dp, self.tp, self.pp, self.cp)

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


def flag_fields(cls) -> list:
    """The fields of ``cls`` that are flags, in declaration order."""
    return [f for f in fields(cls) if "help" in f.metadata]


LAYOUT_FIELDS = tuple(f.name for f in flag_fields(TrainConfig) if f.metadata["layout"])
