"""The framework baseline: torch.distributed (gloo on CPU, nccl on GPU) started on the MPI ranks."""
from __future__ import annotations

import os
import socket


def init_process_group(comm, backend: str = "gloo") -> None:
    """Start torch.distributed on these MPI ranks: rank 0 picks a free port and broadcasts it.

    Concurrent jobs on one machine (parallel tests) each get their own port (MPI-NOTES.md).
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    port = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(comm.bcast(port, root=0))
    dist.init_process_group(backend, rank=comm.Get_rank(), world_size=comm.Get_size())
