"""python -m parallel_lm.train: train a byte-level GPT over MPI ranks, every layout through one loop (train_loop.py).

    python -m parallel_lm.train --steps 50                                 # one rank
    mpiexec -n 8 python -m parallel_lm.train --allreduce ring --out runs/a --trace
    mpiexec -n 4 python -m parallel_lm.train --resume runs/a --steps 400   # continue (on any rank count)
    mpiexec -n 4 python -m parallel_lm.train --engine torch-ddp            # the torch DDP baseline

--steps is the step to reach: a run resumed with --steps N stops at step N.
On --resume, every setting comes from the checkpoint unless given on the
command line; model-shape flags must match it.

This module parses and checks the command line on every rank, importing nothing heavy, so a bad flag ends the
job at once; train_loop.py (torch, the model, the loop) runs what passed.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from . import shards, tokenizer
from .services import shrink
from .costmodel.profiles import load_profile
from .config import LAYOUT_FIELDS, TrainConfig
from .config_checks import validate
from .model import PRESETS
from .runtime import agree, main_guard, netem_network, print0, world
from .train_flags import ModelFlags, split, train_options

def resolve_config(given: set, model: ModelFlags, values: dict, saved: dict | None) -> TrainConfig:
    """The run's TrainConfig from the flags (``given``: the names set on the command line), on top of a checkpoint's
    config when resuming: the checkpoint's model and training settings stay unless given; the layout is the flags'."""
    if saved is None:
        return TrainConfig(model=replace(PRESETS[model.preset], **model.overrides()), **values)
    cfg = TrainConfig.from_dict(saved)
    for k, v in model.overrides().items():
        if k in given and v != getattr(cfg.model, k):
            raise ValueError(f"--{k.replace('_', '-')} {v} does not match the checkpoint's {getattr(cfg.model, k)}: "
                             "drop the flag to resume, or start a fresh run with another --out")
    if "preset" in given and PRESETS[model.preset] != cfg.model:
        raise ValueError(f"--preset {model.preset} does not match the checkpoint's model {cfg.model}")
    return replace(cfg, **{k: v for k, v in values.items() if k in given or k in LAYOUT_FIELDS})


def _check_tensorboard() -> None:
    """torch's SummaryWriter needs the tensorboard package: say so before any work."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'parallel_lm[tensorboard]' "
                         "(make setup installs it), or drop --tensorboard")


def _make_out_dir(out: Path, data: str) -> None:
    """Create --out; with a prepared folder's BPE, copy its tokenizer.json there for generate."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        bpe = Path(data, tokenizer.FILE)
        if shards.is_prepared(data) and bpe.is_file():
            shutil.copyfile(bpe, out / tokenizer.FILE)
    except OSError as e:
        raise OSError(f"cannot create --out {out}: {e.strerror or e}") from None


def with_data_vocabulary(cfg: TrainConfig) -> TrainConfig:
    """A prepared folder's vocabulary (its manifest's tokenizer) for the model; the config itself otherwise."""
    if not shards.is_prepared(cfg.data):
        return cfg
    vocab = shards.read_manifest(cfg.data)["tokenizer"]["vocab_size"]
    return replace(cfg, model=replace(cfg.model, vocab_size=vocab))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@train_options
@click.pass_context
def main(ctx, **params):
    """Train a byte-level GPT across MPI ranks (or alone): data, tensor and pipeline parallelism, ZeRO, or a
    parameter server, all through one training loop."""
    model, values, opts = split(params)
    given = {k for k in params if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    comm = world()
    if opts.on_failure == "shrink":
        agree(comm, shrink.check_available)
        comm = shrink.fault_tolerant_world()
    rank, p = comm.Get_rank(), comm.Get_size()
    if opts.resume:
        from .services import checkpoint  # torch: a resumed run reads its checkpoint before anything is checked
    state = agree(comm, lambda: checkpoint.load(opts.resume, on_fallback=print0)) if opts.resume else None
    cfg = agree(comm, lambda: with_data_vocabulary(resolve_config(given, model, values,
                                                                  state["config"] if state else None)))
    if state is not None:
        agree(comm, lambda: checkpoint.check_model(state, cfg.model, opts.resume))
    agree(comm, lambda: validate(cfg, p))
    netem = agree(comm, lambda: netem_network(opts.netem))
    if netem and (cfg.sync != "allreduce" or cfg.engine != "explicit" or cfg.allreduce == "mpi"):
        raise click.UsageError("--netem delays the explicit collectives' messages: use it with --sync allreduce, "
                               "--engine explicit and an --allreduce other than mpi")
    if opts.on_failure == "shrink" and (cfg.ep > 1 or cfg.cp > 1):
        raise click.UsageError("--on-failure shrink rebuilds the grid on the survivors in place, which it does not "
                               "yet do for --ep (each rank holds experts no other rank has) or --cp (groups of "
                               "ranks share sequences): use --on-failure abort with checkpoints; "
                               "python -m parallel_lm.elastic restarts them on a rank count that fits")
    if opts.on_failure == "shrink" and cfg.engine == "torch-ddp":
        raise click.UsageError("--on-failure shrink rebuilds the explicit collectives' communicators: use it with "
                               "--engine explicit (python -m parallel_lm.elastic restarts torch-ddp runs)")
    profile = agree(comm, lambda: load_profile(opts.predict_profile)) if opts.predict_profile else None
    if profile and cfg.sync == "ps":
        raise click.UsageError("--predict covers --sync allreduce runs; for the parameter server use "
                               "python -m parallel_lm.predict --strategy parameter_server")
    out = Path(opts.folder) if opts.folder else None
    if opts.trace and out is None:
        raise click.UsageError("--trace needs --out DIR to write trace.json into")
    if opts.tensorboard:
        if out is None:
            raise click.UsageError("--tensorboard needs --out DIR: the events go to DIR/tb")
        agree(comm, _check_tensorboard)
    if out is not None:
        agree(comm, lambda: _make_out_dir(out, cfg.data) if rank == 0 else None)
    from .training.train_loop import launch  # torch and the model: imported once the run is known to be valid
    launch(cfg, comm, opts, state, out, netem, profile)


if __name__ == "__main__":
    main_guard(main)
