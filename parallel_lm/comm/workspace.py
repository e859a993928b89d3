"""Scratch buffers allocated once and reused.

A fresh 64 MiB temporary per call is above glibc's mmap threshold: new
pages, and page faults on first touch, every call. The algorithms
therefore borrow their receive buffer from here (docs/mpi-notes.md).
One buffer per thread and array module: a training loop may all-reduce
from a background thread while the main thread computes.
"""
from __future__ import annotations

import threading

_local = threading.local()


def scratch(count: int, dtype, xp):
    """A ``(count,)`` array of ``dtype`` from module ``xp`` (numpy or cupy).

    Its contents are garbage; it stays valid until the next call on this
    thread, so each algorithm uses one scratch buffer at a time.
    """
    dtype = xp.dtype(dtype)
    n_bytes = count * dtype.itemsize
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = xp.__name__
    raw = pool.get(key)
    if raw is None or raw.nbytes < n_bytes:
        # Grow geometrically so a slowly rising size does not reallocate each time.
        size = max(n_bytes, 2 * (raw.nbytes if raw is not None else 0), 4096)
        raw = pool[key] = xp.empty(size, dtype=xp.uint8)
    return raw[:n_bytes].view(dtype)


def release() -> None:
    """Free this thread's scratch buffers (tests and long-lived processes)."""
    _local.pool = {}
