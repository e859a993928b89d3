"""The framework baseline: torch.distributed (gloo on CPU, nccl on GPU) started on the MPI ranks."""
from __future__ import annotations

import atexit
import socket

from ..comm import settings
from .grad_sync import GradSync


def init_process_group(comm, backend: str = "gloo") -> None:
    """Start torch.distributed on these MPI ranks: rank 0 picks a free port and broadcasts it.

    Concurrent jobs on one machine (parallel tests) each get their own port (docs/mpi-notes.md).
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    port = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    host = settings.current().rendezvous_host  # MASTER_ADDR, read at the entry point (environment.py)
    port = comm.bcast(port, root=0)
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size())
    # Tear it down before the interpreter does: left to the end, Gloo's worker threads can still be
    # running while Python finalizes, and one of them aborted a finished run (exit 134, "terminate
    # called without an active exception" from ProcessGroupGloo::runLoop, seen once under Open MPI).
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


class TorchDDP(GradSync):
    """torch's DistributedDataParallel behind the gradient-sync interface of ``grad_sync.py``.

    ``groups``: the world ranks of every data-parallel group (all ranks must
    create all of them, in the same order); ``mine``: this rank's. DDP
    all-reduces in its own backward hooks, so its communication time is not
    separable here (``finish`` returns None for both).
    """

    def __init__(self, module, comm, groups: list[list[int]], mine: int, bucket_mb: float, comm_dtype: str = "fp32"):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        device = next(module.parameters()).device
        init_process_group(comm, "nccl" if device.type == "cuda" else "gloo")
        handles = [dist.new_group(ranks) for ranks in groups] if len(groups) > 1 else [None]
        self.module = DistributedDataParallel(module, bucket_cap_mb=bucket_mb, process_group=handles[mine])
        if comm_dtype == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            self.module.register_comm_hook(handles[mine], default_hooks.fp16_compress_hook)
        super().__init__(module.parameters())

    def forward_context(self, last: bool):
        """DDP decides at forward time whether the coming backward all-reduces: only the last micro-batch's."""
        import contextlib
        return contextlib.nullcontext() if last else self.module.no_sync()

    def finish(self, tie=None) -> tuple[None, None]:
        super().finish(tie)
        return None, None
