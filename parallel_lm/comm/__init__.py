"""Explicit collective communication on NumPy/CuPy buffers (see api.py for the contract)."""
from .api import all_gather, allreduce, allreduce_mean, broadcast, reduce_scatter
from .collectives import ALGORITHMS, ALL_GATHER_ALGORITHMS, BROADCAST_ALGORITHMS, REDUCE_SCATTER_ALGORITHMS
from .topology import chunk_offsets

__all__ = [
    "allreduce", "allreduce_mean", "reduce_scatter", "all_gather", "broadcast",
    "ALGORITHMS", "REDUCE_SCATTER_ALGORITHMS", "ALL_GATHER_ALGORITHMS", "BROADCAST_ALGORITHMS",
    "chunk_offsets",
]
