"""Work that rank 0 does alone (a one-process reference), the others waiting without taking a core.

Oversubscribed MPICH ranks spin while they wait in a blocking collective: on 2 cores, three ranks waiting in a
broadcast leave rank 0 about half a core to train its reference. ``quiet_barrier`` sleeps instead.
"""
from __future__ import annotations

from parallel_lm.runtime import quiet_barrier


def on_rank0(comm, compute):
    """``compute()`` on rank 0 only, its result broadcast to every rank of ``comm``."""
    value = compute() if comm.Get_rank() == 0 else None
    quiet_barrier(comm, poll_s=1e-3)
    return comm.bcast(value, root=0)
