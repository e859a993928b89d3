"""The framework baseline: torch.distributed (gloo on CPU, nccl on GPU) started on the MPI ranks."""
from __future__ import annotations

import atexit
import socket

from ..comm import settings
from .grad_sync import GradSync


def _own_address() -> str | None:
    """This host's first IPv4 address other than loopback (Linux: SIOCGIFADDR on each interface), or None."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                return address
    return None


def _one_node(comm) -> bool:
    """Whether every rank of ``comm`` shares this rank's memory (one machine). Collective."""
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    alone = node.Get_size() == comm.Get_size()
    node.Free()
    return alone


def init_process_group(comm, backend: str = "gloo") -> None:
    """Start torch.distributed on these MPI ranks: rank 0 picks its address and a free port and broadcasts them.

    The address is MASTER_ADDR when set; else 127.0.0.1 when every rank is on one machine, and rank 0's own
    network address when the ranks span nodes (its loopback is no one else's). Concurrent jobs on one machine
    (parallel tests) each get their own port (docs/mpi-notes.md).
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    host = settings.current().rendezvous_host  # MASTER_ADDR, read at the entry point (environment.py)
    one_node = _one_node(comm)
    port = None
    if comm.Get_rank() == 0:
        if host is None:
            host = "127.0.0.1" if one_node else _own_address()
            if host is None:
                raise RuntimeError("the ranks span nodes, but rank 0 has no network address other than loopback: "
                                   "set MASTER_ADDR to an address of rank 0's host that the others reach")
        with socket.socket() as s:
            s.bind(("" if host != "127.0.0.1" else host, 0))
            port = s.getsockname()[1]
    host, port = comm.bcast((host, port), root=0)
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

    def close(self):
        """End torch.distributed once every rank is done with it: left to the interpreter's exit, a gloo thread
        still finishing work can reach for the GIL while Python finalizes and abort the finished run (exit 134,
        "terminate called without an active exception", seen twice under Open MPI)."""
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def abandon(self):
        """Ranks died: no collective call (torch DDP does not shrink; --on-failure shrink refuses it)."""
