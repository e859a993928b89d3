"""checkpoint.pt: written atomically by rank 0, loaded with ``weights_only=True``.

Holds the model ``state_dict`` under "model" (the same keys as a plain
single-process GPT, whatever the parallel layout), the optimizer state,
the step reached, the configuration and the torch RNG state: everything
needed to continue a run exactly, on any number of ranks.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .metrics import write_atomic

FILENAME = "checkpoint.pt"


def save(out_dir: Path, model, optimizer, step: int, config: dict, extra: dict | None = None) -> Path:
    """Write checkpoint.pt atomically; ``model`` is a module or a full state_dict (model parallelism gathers one)."""
    path = Path(out_dir) / FILENAME
    state = {"model": model if isinstance(model, dict) else model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else {}, "step": step,
             "config": config, "torch_rng": torch.get_rng_state(), **(extra or {})}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return path


def load(path_or_dir) -> dict:
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the --out folder of an earlier run")
    return torch.load(path, map_location="cpu", weights_only=True)
