"""checkpoint.pt: written atomically by rank 0, loaded with ``weights_only=True``.

Whatever the layout, it holds what one process training the same model
would hold, under the same names:

- "model": the ``state_dict`` of a plain single-process GPT;
- "optimizer": {"by_name": {parameter name: {"step", "exp_avg", "exp_avg_sq"}}},
  every tensor unsharded (AdamW; empty for plain SGD), so that a run saved
  under one layout reloads under any other;
- "step", "config", "torch_rng", and "loss_scaler" ({"scale", "good_steps"})
  under fp16;
- "meta": {"format", "version", "step", "sha256"}: what wrote it, and a
  SHA-256 over every tensor's name, dtype, shape and bytes and the step, so
  that a file changed after it was written is caught on load.

A file is written to a temporary name, flushed to disk and renamed: a
crash or a kill mid-write leaves the previous checkpoint, never a file that
looks whole. With ``keep`` K > 1 each save is ``checkpoint-STEP.pt`` and
checkpoint.pt a hard link to the newest; older ones beyond K are deleted.
``load`` of a run's folder falls back to the newest intact one when
checkpoint.pt is truncated, corrupt or foreign, and says so.

``gather`` assembles the full tensors from the pieces a layout holds
(tensor-parallel slices joined, pipeline stages merged); ``piece`` in
parallel/tensor_parallel_sharding.py cuts them back out on load.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
from pathlib import Path

import torch

from ..faults import maybe_kill_in_write
from ..parallel.optim import decays
from ..parallel.tensor_parallel_sharding import join

FILENAME = "checkpoint.pt"
FORMAT, VERSION = "parallel_lm checkpoint", 1
NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")


def digest(state: dict) -> str:
    """SHA-256 over every tensor (its path of keys, dtype, shape and bytes) and the step, in key order."""
    h = hashlib.sha256(f"step {state['step']}".encode())

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{prefix}/{k}", value[k])
        elif torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            h.update(f"{prefix} {t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    walk("", {k: v for k, v in state.items() if k != "meta"})
    return h.hexdigest()


def _write(path: Path, state: dict) -> None:
    """Serialize in memory, write to a temporary name in the same folder, fsync, rename: all of the file or
    none of it. (Writing the bytes ourselves, not through torch.save's file writer, keeps the OS's reason
    for a failed write: ENOSPC for a full disk, EFBIG over a file-size limit.)"""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        maybe_kill_in_write()  # fault injection (faults.py): a kill between the bytes and the rename
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        what = f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}" if e.errno else str(e)
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise OSError(e.errno, f"cannot write checkpoint {path} ({what}){full}; the previous checkpoint in "
                               f"{path.parent} is untouched: free space or pass another --out") from None


def training_state(model_state: dict, optimizer_by_name: dict, step: int, config: dict,
                   loss_scaler: dict | None = None) -> dict:
    """A checkpoint's contents (this module's docstring says each key): the one place every writer builds them,
    the trainer's, the parameter server's and a shrinking survivor's."""
    return {"model": model_state, "optimizer": {"by_name": optimizer_by_name}, "step": step, "config": config,
            "torch_rng": torch.get_rng_state(), **({"loss_scaler": loss_scaler} if loss_scaler else {})}


def save(out_dir: Path, model_state: dict, optimizer_by_name: dict, step: int, config: dict,
         loss_scaler: dict | None = None, keep: int = 1) -> Path:
    """Write checkpoint.pt atomically from full (single-process) model and optimizer states, with its checksum;
    ``keep`` > 1: as checkpoint-STEP.pt, checkpoint.pt linking to it, the newest ``keep`` kept."""
    out_dir = Path(out_dir)
    path = out_dir / FILENAME
    for stale in out_dir.glob(".checkpoint*.pt.tmp*"):  # left by a job killed mid-write
        stale.unlink(missing_ok=True)
    state = training_state(model_state, optimizer_by_name, step, config, loss_scaler)
    state["meta"] = {"format": FORMAT, "version": VERSION, "step": step, "sha256": digest(state)}
    if keep <= 1:
        _write(path, state)
        return path
    numbered = out_dir / f"checkpoint-{step:08d}.pt"
    _write(numbered, state)
    link = out_dir / f".{FILENAME}.link{os.getpid()}"
    link.unlink(missing_ok=True)
    os.link(numbered, link)
    os.replace(link, path)
    for old in numbered_checkpoints(out_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def numbered_checkpoints(folder: Path) -> list[Path]:
    """checkpoint-STEP.pt files in ``folder``, newest step first."""
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := NUMBERED.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def available(folder) -> bool:
    """Whether a run's folder holds a checkpoint (intact or not) to resume from."""
    folder = Path(folder)
    return (folder / FILENAME).is_file() or (folder.is_dir() and bool(numbered_checkpoints(folder)))


def verify(path: Path) -> dict:
    """The checkpoint at ``path``, or ValueError saying what is wrong with the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a bad file as RuntimeError, UnpicklingError, EOFError or OSError
        size = path.stat().st_size
        raise ValueError(f"{path} is not a readable checkpoint: truncated or corrupted ({size:,} bytes; torch.load: "
                         f"{type(e).__name__}), or not written by python -m parallel_lm.train") from None
    missing = [k for k in ("model", "config", "step") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a parallel_lm checkpoint (no {', '.join(missing)}): a foreign file; pass "
                         "the --out folder of a run of python -m parallel_lm.train")
    meta = state.get("meta")
    if meta is not None:  # checkpoints from before the checksum have none
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: its metadata {meta!r} is not parallel_lm's: a foreign or edited file")
        if meta.get("sha256") != digest(state):
            raise ValueError(f"{path}: checksum mismatch (SHA-256 of its tensors is not the one written with them): "
                             "the file was corrupted or modified after it was written")
    return state


def load(path_or_dir, on_fallback=None) -> dict:
    """The checkpoint in a run's folder (or at a file path); ValueError naming the file when it is not one.

    In a folder, a checkpoint.pt that fails ``verify`` gives way to the newest intact
    checkpoint-STEP.pt (``--keep-checkpoints``); ``on_fallback(message)`` hears about it.
    """
    path = Path(path_or_dir)
    folder = path if path.is_dir() else None
    if folder is not None:
        path = folder / FILENAME
    if not path.is_file() and not (folder and numbered_checkpoints(folder)):
        raise FileNotFoundError(f"no checkpoint at {path}: pass the --out folder of an earlier run")
    try:
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        return verify(path)
    except ValueError as first:
        for older in numbered_checkpoints(folder) if folder else []:
            if path.is_file() and older.samefile(path):
                continue
            try:
                state = verify(older)
            except ValueError:
                continue
            if on_fallback:
                on_fallback(f"{first}; resuming from the newest intact checkpoint instead: {older} "
                            f"(step {state['step']})")
            return state
        raise


def check_model(state: dict, model_config, path) -> None:
    """ValueError naming the first tensor of the checkpoint that a model of ``model_config`` does not have."""
    from ..model import GPT
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
        parts = pp_comm.gather(mine if grid.replica_rank == 0 and grid.tp_rank == 0 else None, root=0)
        if grid.pp_rank == 0 and parts[0] is not None:
            mine = {k: v for part in parts for k, v in part.items()}
    return mine if grid.rank == 0 else None
