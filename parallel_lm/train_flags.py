"""The options of ``python -m parallel_lm.train``, made from the fields that hold them.

A flag is declared once, as a field with its default and help (``config.flag``): what to train and how to lay
it out in ``TrainConfig`` (config.py), which model to start from in ``ModelFlags``, and what this launch does
around the run (where to write, what to print, what to do on failure) in ``RunOptions``. ``train_options``
turns every such field into a click option; ``split`` turns click's values back into the three objects, so no
raw parameter dict travels into training.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

import click

from .config import TrainConfig, flag, flag_fields
from .model import PRESETS
from .model.config import ARCHS
from .services.shrink import MODES
from .services.watchdog import DEFAULT_TIMEOUT


@dataclass
class ModelFlags:
    """The model: a preset, and any of its shape overridden (None: the preset's)."""
    preset: str = flag("tiny", "Model size: tiny 0.12M, small 0.84M, medium 10.8M, gpt2 86M parameters.",
                       choices=tuple(PRESETS))
    arch: str | None = flag(None, "Block architecture: gpt (GPT-2: GELU MLP, LayerNorm, biases, learned positions, "
                            "head tied to the embedding; the default) or llama (SwiGLU MLP, RMSNorm, no biases, "
                            "rotary positions, a head of its own).", choices=ARCHS)
    n_kv_head: int | None = flag(None, "--arch llama: key/value heads, each shared by --n-head / this many query "
                                 "heads (grouped-query attention; default: as many as --n-head).", lo=1)
    n_layer: int | None = flag(None, "Override the preset's transformer blocks (>= 1).", lo=1)
    n_head: int | None = flag(None, "Override the preset's attention heads (>= 1, dividing --n-embd).", lo=1)
    n_embd: int | None = flag(None, "Override the preset's width (channels, >= 1).", lo=1)
    block_size: int | None = flag(None, "Override the preset's context length (bytes, >= 1; memory grows with it: "
                                  "checked before training).", lo=1)
    n_experts: int | None = flag(None, "Make each block's MLP a mixture of this many experts with a top-k router "
                                 "(0 or unset: the preset's dense MLP).", lo=0)
    top_k: int | None = flag(None, "Experts per token (1..--n-experts; default 1).", lo=1)
    capacity_factor: float | None = flag(None, "Assignments an expert takes per sequence, as a multiple of T x k / E; "
                                         "the rest are dropped and counted (0: no limit; default 1.25).")
    aux_loss_coef: float | None = flag(None, "Weight of the experts' load-balancing loss (default 0.01).")

    def overrides(self) -> dict:
        """The GPTConfig fields given on the command line."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "preset" and getattr(self, f.name) is not None}


@dataclass
class RunOptions:
    """What this launch does around the run; never stored in a checkpoint."""
    out: str | None = flag(None, "Folder for metrics.jsonl, checkpoint.pt and trace.json.", folder=True)
    keep_checkpoints: int = flag(1, "Keep the newest K checkpoints (OUT/checkpoint-STEP.pt, checkpoint.pt linking "
                                 "the newest); --resume falls back to an older intact one when the newest is "
                                 "damaged.", lo=1)
    resume: str | None = flag(None, "Continue from this folder's checkpoint.pt.", folder=True)
    tensorboard: bool = flag(False, "Also write TensorBoard scalars (loss, lr, tokens/s, step and communication "
                             "time, val loss, loss scale, bubble, memory) to OUT/tb; view with tensorboard --logdir.")
    trace: bool = flag(False, "Write a Chrome trace (one track per rank) to OUT/trace.json.")
    threads: int | None = flag(None, "torch threads per rank (>= 1; default: cores / ranks on the node).", lo=1)
    quiet: bool = flag(False, "No progress bar.")
    predict_profile: str | None = flag(None, "At the end, print the cost model's step and communication times for "
                                       "this run beside the measured ones (PROFILE: this machine calibrated with "
                                       "python -m parallel_lm.calibrate, best with the same rank count; also a "
                                       "shipped name or alpha=S,beta=S_PER_B); with --out, also OUT/prediction.json.")
    peak_tflops: float | None = flag(None, "The device's peak TFLOP/s per rank for MFU/HFU (a datasheet figure, e.g. "
                                     "989 for an H100's bf16); default: an fp32 matmul timed on this node, shared by "
                                     "its ranks.", lo=0, lo_open=True)
    on_failure: str = flag("abort", "When a rank dies: abort the job (restart it with python -m "
                           "parallel_lm.elastic), or shrink: the survivors go on without it (needs Open MPI launched "
                           "with mpirun --with-ft ulfm).", choices=MODES)
    timeout: float = flag(DEFAULT_TIMEOUT, "Hang watchdog: a rank that makes no progress for this many seconds "
                          "(stopped, stuck in I/O, deadlocked) ends the job, named (0: off).", lo=0)
    force: bool = flag(False, "Train even when the memory estimate says the run cannot fit.")
    netem: str | None = flag(None, "Delay every gradient message like this network (a profile name or file, or "
                             "alpha=S,beta=S_PER_B): one machine behaves like a cluster. Explicit engine, --sync "
                             "allreduce only.")

    @property
    def folder(self) -> str | None:
        """Where this run writes: --out, else the folder it resumes."""
        return self.out or self.resume


FLAG_NAMES = {"predict_profile": "predict"}  # a field whose flag has another name
METAVARS = {"predict_profile": "PROFILE", "netem": "PROFILE"}


def _option(f):
    """The click option of one flag field."""
    meta, name = f.metadata, "--" + FLAG_NAMES.get(f.name, f.name).replace("_", "-")
    default = f.default if f.default is not MISSING else None
    kind = str(f.type).split("|")[0].strip()
    extra = {"help": meta["help"], "metavar": METAVARS.get(f.name)}
    if kind == "bool":
        if default:  # on unless turned off
            return click.option(f"{name}/--no-{name[2:]}", f.name, default=True, **extra)
        return click.option(name, f.name, is_flag=True, **extra)
    if meta["folder"]:
        return click.option(name, f.name, type=click.Path(file_okay=False), **extra)
    if meta["parse"]:
        def parse(ctx, param, value, parse=meta["parse"]):
            try:
                return parse(value)
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
        return click.option(name, f.name, default=str(default), callback=parse, **extra)
    if meta["choices"]:
        kind_type = click.Choice(list(meta["choices"]))
    elif kind in ("int", "float") and (meta["lo"] is not None or meta["hi"] is not None):
        kind_type = (click.IntRange(meta["lo"], meta["hi"]) if kind == "int"
                     else click.FloatRange(meta["lo"], meta["hi"], min_open=meta["lo_open"]))
    else:
        kind_type = {"int": int, "float": float, "str": str}[kind]
    return click.option(name, f.name, default=default, type=kind_type, **extra)


FLAG_CLASSES = (ModelFlags, TrainConfig, RunOptions)


def train_options(f):
    """Apply every train option to the command ``f``, in --help order: the model, the run, this launch."""
    for cls in reversed(FLAG_CLASSES):
        for field_ in reversed(flag_fields(cls)):
            f = _option(field_)(f)
    return f


def split(params: dict) -> tuple[ModelFlags, dict, RunOptions]:
    """click's values as (the model flags, the TrainConfig fields' values by name, the launch's options)."""
    take = lambda cls: {f.name: params[f.name] for f in flag_fields(cls)}
    return ModelFlags(**take(ModelFlags)), take(TrainConfig), RunOptions(**take(RunOptions))
