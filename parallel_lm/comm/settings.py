"""How the collectives run in this process: set once by the program's entry point, never read from the environment here.

``parallel_lm/environment.py`` fills a ``CommSettings`` from the ``PARALLEL_LM_*`` variables and
``configure``s it at the start of every command, lesson and test program; a program that sets nothing gets
the defaults below. Error messages name the variable a user sets (``RANKS_PER_NODE``, ``RAILS``), so that
the fix they suggest is one the user can make.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

RANKS_PER_NODE = "PARALLEL_LM_RANKS_PER_NODE"
RAILS = "PARALLEL_LM_RAILS"
DEVICES = ("", "cpu", "cuda")


@dataclass(frozen=True)
class CommSettings:
    check: bool = False  # every collective first verifies that all ranks called it alike (api.py)
    trace: bool = False  # print every message a collective sends (trace.py's TraceComm)
    device: str = ""  # "cpu", "cuda", or "": CUDA when CuPy finds a GPU (buffers.py)
    cuda_aware: bool | None = None  # whether MPI reads device pointers; None: ask the library (buffers.py)
    ranks_per_node: int | None = None  # emulated nodes of this many consecutive ranks; None: the real ones (nodes.py)
    rails: int | None = None  # rings between nodes per node; None: one per local rank (nodes.py)
    rendezvous_host: str | None = None  # where torch.distributed's ranks meet; None: rank 0's (parallel/torch_ddp.py)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"PARALLEL_LM_DEVICE={self.device!r}: use 'cpu' or 'cuda' (or unset it to choose "
                             "automatically)")
        for name, value in ((RANKS_PER_NODE, self.ranks_per_node), (RAILS, self.rails)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} must be a positive whole number")


_current = CommSettings()


def current() -> CommSettings:
    """The settings in force (the defaults until ``configure`` is called)."""
    return _current


def configure(settings: CommSettings | None = None, **changes) -> CommSettings:
    """Put ``settings`` (default: the ones in force) with ``changes`` in force; returns the previous ones."""
    global _current
    previous = _current
    _current = replace(settings or _current, **changes)
    return previous
