"""Explicit collective communication on NumPy/CuPy buffers (see api.py for the contract)."""
from .api import (
    all_gather,
    all_to_all,
    all_to_allv,
    allreduce,
    allreduce_mean,
    broadcast,
    exchange_counts,
    reduce_scatter,
)
from .collectives import (
    ALGORITHMS,
    ALL_GATHER_ALGORITHMS,
    ALLTOALL_ALGORITHMS,
    ALLTOALLV_ALGORITHMS,
    BROADCAST_ALGORITHMS,
    NODE_ALGORITHMS,
    REDUCE_SCATTER_ALGORITHMS,
)
from .topology import chunk_offsets

__all__ = [
    "allreduce", "allreduce_mean", "reduce_scatter", "all_gather", "broadcast",
    "all_to_all", "all_to_allv", "exchange_counts",
    "ALGORITHMS", "REDUCE_SCATTER_ALGORITHMS", "ALL_GATHER_ALGORITHMS", "BROADCAST_ALGORITHMS",
    "ALLTOALL_ALGORITHMS", "ALLTOALLV_ALGORITHMS", "NODE_ALGORITHMS",
    "chunk_offsets",
]
