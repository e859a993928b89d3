"""Bandwidth arithmetic, as nccl-tests defines it (doc/PERFORMANCE.md in NVIDIA/nccl-tests).

algbw = size / time, where size is the buffer's bytes. busbw rescales
algbw by how many bytes each rank must move at best for that operation, so
that busbw is comparable across operations and rank counts and can be read
against the hardware's link bandwidth:

  allreduce       busbw = algbw * 2(p-1)/p
  reduce_scatter  busbw = algbw * (p-1)/p
  all_gather      busbw = algbw * (p-1)/p
  broadcast       busbw = algbw
  all_to_all      busbw = algbw * (p-1)/p  (size = one rank's send buffer)
  pingpong        busbw = algbw  (size / half round trip, as OSU's osu_latency/osu_bw)
"""
from __future__ import annotations

from ..costmodel.formulas import bus_factor

OPS = ("allreduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all", "pingpong")


def algbw_GBps(size_bytes: int, time_s: float) -> float:
    return size_bytes / time_s / 1e9 if time_s > 0 else float("nan")


def busbw_GBps(op: str, size_bytes: int, time_s: float, ranks: int) -> float:
    return algbw_GBps(size_bytes, time_s) * bus_factor(op, ranks)


def sweep(min_bytes: int, max_bytes: int, factor: float) -> list[int]:
    """Sizes min, min*factor, ... up to max (inclusive), as nccl-tests' -b/-e/-f."""
    if min_bytes <= 0 or max_bytes < min_bytes:
        raise ValueError(f"need 0 < min-bytes <= max-bytes, got {min_bytes} and {max_bytes}")
    if not 1 < factor < float("inf"):  # also refuses nan
        raise ValueError(f"--factor must be > 1 so the sweep grows, got {factor}")
    sizes, s = [], float(min_bytes)
    while s <= max_bytes:
        sizes.append(int(s))
        s *= factor
    return sizes
