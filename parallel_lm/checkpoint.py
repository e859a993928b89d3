"""checkpoint.pt: written atomically by rank 0, loaded with ``weights_only=True``.

Whatever the layout, it holds what one process training the same model
would hold, under the same names:

- "model": the ``state_dict`` of a plain single-process GPT;
- "optimizer": {"by_name": {parameter name: {"step", "exp_avg", "exp_avg_sq"}}},
  every tensor unsharded (AdamW; empty for plain SGD), so that a run saved
  under one layout reloads under any other;
- "step", "config", "torch_rng", and "loss_scaler" ({"scale", "good_steps"})
  under fp16.

``gather`` assembles the full tensors from the pieces a layout holds
(tensor-parallel slices joined, pipeline stages merged); ``piece`` in
parallel/tensor_parallel.py cuts them back out on load.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .metrics import write_atomic
from .parallel.optim import decays
from .parallel.tensor_parallel import join

FILENAME = "checkpoint.pt"


def save(out_dir: Path, model_state: dict, optimizer_by_name: dict, step: int, config: dict,
         extra: dict | None = None) -> Path:
    """Write checkpoint.pt atomically from full (single-process) model and optimizer states."""
    path = Path(out_dir) / FILENAME
    state = {"model": model_state, "optimizer": {"by_name": optimizer_by_name}, "step": step,
             "config": config, "torch_rng": torch.get_rng_state(), **(extra or {})}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return path


def load(path_or_dir) -> dict:
    """The checkpoint in a run's folder (or at a file path); ValueError naming the file when it is not one."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the --out folder of an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a bad file as RuntimeError, UnpicklingError, EOFError or OSError
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: truncated, corrupted, or not "
                         "written by python -m parallel_lm.train): pass the --out folder of a finished run") from None
    missing = [k for k in ("model", "config", "step") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a parallel_lm checkpoint (no {', '.join(missing)}): pass the --out folder "
                         "of a run of python -m parallel_lm.train")
    return state


def check_model(state: dict, model_config, path) -> None:
    """ValueError naming the first tensor of the checkpoint that a model of ``model_config`` does not have."""
    from .model import GPT
    with torch.device("meta"):  # shapes only: nothing allocated
        want = {k: tuple(v.shape) for k, v in GPT(model_config).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state["model"].items()}
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise ValueError(f"{path}: its model does not match its own config ({key}: {have.get(key)} in the file, "
                             f"{want.get(key)} for {model_config}): the file was edited or comes from another "
                             "program; pass the --out folder of a run of python -m parallel_lm.train")


def optimizer_by_name(saved: dict, full_model) -> dict:
    """The checkpoint's optimizer state as {parameter name: state}; converts torch's index-keyed form
    (checkpoints written before states were saved by name: one process's AdamW over the decay groups)."""
    if not saved:
        return {}
    if "by_name" in saved:
        return saved["by_name"]
    named = list(full_model.named_parameters())
    order = [n for n, p in named if decays(p)] + [n for n, p in named if not decays(p)]
    return {order[i]: state for i, state in saved.get("state", {}).items()}


def gather(local: dict, grid, tp_comm, pp_comm) -> dict | None:
    """The full tensors on world rank 0 (None elsewhere) from every rank's ``local`` pieces, by name.

    Collective over the whole grid. Tensor-parallel pieces are joined on
    tp rank 0; the first data-parallel replica's stages send their parts
    along the pipeline to world rank 0. Keys may carry a prefix ("exp_avg:")
    before the parameter name; ``join`` looks at the name's end.
    """
    mine = {k: v.detach().cpu().clone() for k, v in local.items()}
    if grid.tp > 1:
        parts = tp_comm.gather(mine, root=0)
        mine = {k: join(k, [p[k] for p in parts]) for k in mine} if grid.tp_rank == 0 else None
    if grid.pp > 1:
        parts = pp_comm.gather(mine if grid.dp_rank == 0 and grid.tp_rank == 0 else None, root=0)
        if grid.pp_rank == 0 and parts[0] is not None:
            mine = {k: v for part in parts for k, v in part.items()}
    return mine if grid.rank == 0 else None
