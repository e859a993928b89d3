"""Who owns what under a parameter server (parameter_server.py): the layout of ranks, the model as one flat
vector cut into the servers' shards, and the collectives that move whole shards (at the end of a run, and for a
checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..comm.topology import chunk_offsets


@dataclass(frozen=True)
class PSLayout:
    world: int
    servers: int

    @property
    def workers(self) -> list[int]:
        return list(range(self.servers, self.world))

    def is_server(self, rank: int) -> bool:
        return rank < self.servers

    def shard(self, n: int, server: int) -> tuple[int, int]:
        offs = chunk_offsets(n, self.servers)
        return int(offs[server]), int(offs[server + 1])


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat(model, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset: offset + p.numel()].view_as(p))
            offset += p.numel()


def share_final_params(comm, layout: PSLayout, model, server) -> None:
    """Each server broadcasts its shard; afterwards every rank's model holds the trained parameters. ``server``:
    this rank's ``Server`` (parameter_server.py) on a server rank, None on a worker."""
    flat = flat_params(model).numpy().copy()
    for s in range(layout.servers):
        lo, hi = layout.shard(flat.size, s)
        if server is not None and s == server.rank:
            flat[lo:hi] = server.params.numpy()
        comm.Bcast(flat[lo:hi], root=s)
    load_flat(model, torch.from_numpy(flat))


def gather_shards(comm, server, servers: int, root: int | None = None):
    """(flat parameters, {kind: flat optimizer state}) over the whole model, joined from the shards of the
    servers (ranks 0..servers-1 of ``comm``): on ``root``, or on every rank when None; None elsewhere. Collective."""
    mine = (server.params.clone(), server.opt.state()) if server is not None else None
    parts = comm.allgather(mine) if root is None else comm.gather(mine, root=root)
    if parts is None:
        return None
    parts = parts[:servers]
    kinds = parts[0][1]
    return (torch.cat([values for values, _ in parts]),
            {k: v if v.dim() == 0 else torch.cat([state[k] for _, state in parts]) for k, v in kinds.items()})
