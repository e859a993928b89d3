"""torch.distributed's gloo all-reduce, the framework baseline (imports torch only when asked)."""
from __future__ import annotations

import os
import socket


def init_gloo(comm) -> None:
    """Start a gloo process group on the MPI ranks (a free port chosen by rank 0 and broadcast)."""
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
    dist.init_process_group("gloo", rank=comm.Get_rank(), world_size=comm.Get_size())


def gloo_allreduce(buf) -> None:
    import torch
    import torch.distributed as dist
    dist.all_reduce(torch.from_numpy(buf))  # zero-copy view of the NumPy buffer
