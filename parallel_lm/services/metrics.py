"""What a training run records: metrics.jsonl (one line per step) and a Chrome trace (one track per rank)."""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

ALWAYS = ("step", "loss", "lr", "tokens", "step_s", "compute_s", "comm_s", "exposed_comm_s", "tokens_per_s")


@dataclass
class StepRecord:
    """One optimizer step of any layout, as metrics.jsonl records it (seconds; loss in nats per byte)."""
    step: int  # steps done after this one
    loss: float  # mean training loss over the global batch
    lr: float
    tokens: int  # tokens in the global batch
    step_s: float
    compute_s: float | None  # forward + backward on this rank (rank 0's)
    comm_s: float | None  # gradient synchronization (None: inside torch DDP's hooks)
    exposed_comm_s: float | None  # the part of comm_s not hidden behind backward
    tokens_per_s: float
    tp_comm_s: float | None = None  # tensor-parallel all-reduces, inside compute_s
    cp_wait_s: float | None = None  # context parallelism: waiting for key/value blocks not hidden by attention
    ep_comm_s: float | None = None  # expert parallelism: the forward all-to-alls (counts, dispatch, combine)
    bubble: float | None = None  # pipeline: measured idle fraction, mean over ranks
    bubble_formula: float | None = None  # (p-1)/(m+p-1)
    loss_scale: float | None = None  # fp16 loss scaling
    skipped: bool | None = None  # fp16: the step was skipped on an overflow
    val_loss: float | None = None
    server_busy_s: float | None = None  # parameter server: server 0's busy time this step
    staleness: dict | None = None  # parameter server: applied gradients by staleness (updates)
    updates: int | None = None  # parameter server: optimizer updates applied so far
    memory_mib: float | None = None  # rank 0's parameters, gradients, optimizer state and peak activations, measured
    memory_formula_mib: float | None = None  # the same by the formulas ((4+4+K)Ψ/N_d pieces, Korthikanti's activations)
    experts: dict | None = None  # mixture of experts: tokens routed per expert (all layers), imbalance, dropped fraction

    def to_json(self) -> dict:
        """The contract's keys always; the others only where they apply."""
        return {k: v for k, v in asdict(self).items() if k in ALWAYS or v is not None}


def validation_line(val: float, vocab_size: int = 256) -> str:
    unit = "byte" if vocab_size == 256 else "token"
    return (f"validation loss {val:.4f} nats/{unit} ({val / math.log(2):.3f} bits/{unit}; uniform would be "
            f"{math.log(vocab_size):.2f} nats)")


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


# TensorBoard tag -> StepRecord field; a field that is None (not this layout's) is not written
SCALARS = {"train/loss": "loss", "train/lr": "lr", "train/tokens_per_s": "tokens_per_s", "train/step_s": "step_s",
           "train/comm_s": "comm_s", "train/exposed_comm_s": "exposed_comm_s", "val/loss": "val_loss",
           "train/loss_scale": "loss_scale", "train/bubble": "bubble", "train/memory_mib": "memory_mib"}


def tensorboard_writer(folder: Path):
    """torch's SummaryWriter on ``folder``, or an ImportError that says what to install.

    Where TensorFlow is installed, tensorboard imports all of it to write event files (about 5 s per rank here)
    unless the marker module of its own TensorFlow-free build, ``tensorboard.compat.notf``, exists: then its
    stub writes the same files. The marker is set unless the program already imported TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install 'parallel_lm[tensorboard]' "
                          "(make setup installs it)") from None
    return SummaryWriter(log_dir=str(folder))


class MetricsWriter:
    """Appends one JSON object per line, and with ``tensorboard`` (a folder) the SCALARS as TensorBoard events;
    rank 0 only (others get a writer that does nothing)."""

    def __init__(self, path: Path | None, resume: bool = False, tensorboard: Path | None = None,
                 resumed_step: int | None = None):
        """``resume``: append; ``resumed_step``: first drop the lines past it (steps a failed run did after
        the checkpoint it resumes from, done again now)."""
        self.last_step = 0
        if path and resume and resumed_step is not None and Path(path).is_file():
            keep = [line for line in Path(path).read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
            write_atomic(path, lambda tmp: tmp.write_text("".join(keep)))
            self.last_step = max((json.loads(line)["step"] for line in keep), default=0)
        self.file = open(path, "a" if resume else "w") if path else None
        self.tb = tensorboard_writer(tensorboard) if path and tensorboard else None

    def reopened(self, path: Path | None, tensorboard: Path | None, step: int, record: "StepRecord | None"
                 ) -> "MetricsWriter":
        """After ranks died (--on-failure shrink): the writer of the survivors' rank 0 (``path``; None elsewhere),
        the file cut at ``step``, and given ``record`` (of step ``step``, from another survivor) if it lacks it."""
        self.close()
        writer = MetricsWriter(path, resume=True, tensorboard=tensorboard, resumed_step=step)
        if record is not None and writer.last_step < step:
            writer.write(record)
        return writer

    def write(self, record: StepRecord) -> None:
        self.last_step = record.step
        if self.file:
            self.file.write(json.dumps(record.to_json()) + "\n")
            self.file.flush()
        if self.tb:
            for tag, name in SCALARS.items():
                value = getattr(record, name)
                if value is not None:
                    self.tb.add_scalar(tag, value, record.step)
            self.tb.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def completed_step(out: Path) -> int:
    """The last step OUT/metrics.jsonl records; 0 without one (or while its first line is being written)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


class Span(NamedTuple):
    """One interval on a rank's timeline (seconds since the timeline's t0)."""
    name: str
    start: float
    duration: float
    thread: str


class Timeline:
    """Spans (name, start, duration, thread) on this rank, for a Chrome/Perfetto trace."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events = []
        self.lock = threading.Lock()

    def add(self, name: str, start: float, duration: float, thread: str = "main") -> None:
        with self.lock:
            self.events.append(Span(name, start - self.t0, duration, thread))

    def span(self, name: str, thread: str = "main"):
        timeline = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timeline.add(name, self.start, time.perf_counter() - self.start, thread)
        return _Timer()


def write_chrome_trace(path: Path, per_rank_events: list[list]) -> None:
    """Chrome trace JSON (loads in Perfetto / chrome://tracing): pid = rank, one tid per thread."""
    out = []
    for rank, events in enumerate(per_rank_events):
        out.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}})
        threads = sorted({e.thread for e in events}, key=lambda t: t != "main")
        for tid, thread in enumerate(threads):
            out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": thread}})
        tids = {t: i for i, t in enumerate(threads)}
        out += [{"name": name, "ph": "X", "pid": rank, "tid": tids[thread], "ts": start * 1e6, "dur": dur * 1e6}
                for name, start, dur, thread in events]
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"traceEvents": out, "displayTimeUnit": "ms"})))
