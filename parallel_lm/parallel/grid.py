"""The dp x cp x tp x pp process grid: which ranks work together on what.

World rank r sits at coordinates (pp, dp, cp, tp) with tensor-parallel ranks
innermost (consecutive ranks, on a cluster the GPUs of one node, which
exchange the most), then context parallel, then data parallel, then pipeline
stages outermost, as Megatron-LM lays them out (Shoeybi et al. 2019;
Narayanan et al. 2021):

    r = ((pp_rank * dp + dp_rank) * cp + cp_rank) * tp + tp_rank

Each dimension means one thing everywhere in the package, the cost model
included: ``dp`` is how many ways the global batch is cut, ``cp`` how many
ranks share one slice's sequences (each holding 1/cp of every sequence),
``tp`` how many hold a slice of every layer, ``pp`` how many stages the layers
are cut into. The ``replicas`` (dp x cp ranks with the same tp and pp
coordinates) hold the same shard of the model: gradients are averaged over
them. Each rank belongs to three groups: its tensor-parallel group, its
replicas, and its pipeline (same dp, cp and tp: the stages it passes
activations along). ``Grid`` owns all of this arithmetic; ``split`` makes the
three sub-communicators with ``Comm.Split``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    dp: int
    tp: int
    pp: int
    rank: int
    cp: int = 1

    @classmethod
    def for_world(cls, world: int, rank: int, dp: int | None = None, tp: int = 1, pp: int = 1,
                  cp: int = 1) -> "Grid":
        """The grid for ``world`` ranks; ``dp`` defaults to what is left after tp x pp x cp. ValueError names the fix."""
        if tp < 1 or pp < 1 or cp < 1 or (dp is not None and dp < 1):
            raise ValueError(f"--dp, --tp, --pp and --cp must be >= 1 (got {dp}, {tp}, {pp}, {cp})")
        if world % (tp * pp):
            raise ValueError(f"{world} ranks do not split into --tp {tp} x --pp {pp} groups: "
                             f"run a multiple of {tp * pp} ranks, or change --tp/--pp")
        if (world // (tp * pp)) % cp:
            raise ValueError(f"--cp {cp} must divide the {world // (tp * pp)} ranks left after "
                             f"--tp {tp} x --pp {pp}: run a multiple of {cp * tp * pp} ranks")
        if dp is None:
            dp = world // (tp * pp * cp)
        if dp * cp * tp * pp != world:
            cps = f" x --cp {cp}" if cp > 1 else ""
            fit = max(1, world // (tp * pp * cp))
            raise ValueError(f"--dp {dp}{cps} x --tp {tp} x --pp {pp} = {dp * cp * tp * pp}, but the job has {world} "
                             f"ranks: make the product equal the rank count (e.g. --dp {fit} with "
                             f"{fit * cp * tp * pp} ranks)")
        return cls(dp, tp, pp, rank, cp)

    @property
    def replicas(self) -> int:
        """dp x cp: the ranks holding the same shard of the model (its gradients are averaged over them)."""
        return self.dp * self.cp

    @property
    def size(self) -> int:
        return self.replicas * self.tp * self.pp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def replica_rank(self) -> int:
        """This rank's place among its replicas: dp_rank x cp + cp_rank."""
        return self.rank // self.tp % self.replicas

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank trains."""
        return self.replica_rank // self.cp

    @property
    def cp_rank(self) -> int:
        """Which part of each of its sequences this rank holds."""
        return self.replica_rank % self.cp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.replicas)

    def world_rank(self, dp_rank: int, tp_rank: int, pp_rank: int, cp_rank: int = 0) -> int:
        return ((pp_rank * self.dp + dp_rank) * self.cp + cp_rank) * self.tp + tp_rank

    def _at_replica(self, replica: int, tp_rank: int, pp_rank: int) -> int:
        return (pp_rank * self.replicas + replica) * self.tp + tp_rank

    def tp_group(self) -> list[int]:
        return [self._at_replica(self.replica_rank, t, self.pp_rank) for t in range(self.tp)]

    def replica_group(self) -> list[int]:
        return [self._at_replica(d, self.tp_rank, self.pp_rank) for d in range(self.replicas)]

    def all_replica_groups(self) -> list[list[int]]:
        """Every group of replicas' world ranks, in the order of their (pp, tp) coordinates."""
        return [[self._at_replica(d, t, s) for d in range(self.replicas)] for s in range(self.pp) for t in range(self.tp)]

    def pp_group(self) -> list[int]:
        return [self._at_replica(self.replica_rank, self.tp_rank, s) for s in range(self.pp)]

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def split(self, comm):
        """(tp_comm, replica_comm, pp_comm): sub-communicators whose ranks are tp_rank, replica_rank and pp_rank."""
        tp_comm = comm.Split(color=self.pp_rank * self.replicas + self.replica_rank, key=self.tp_rank)
        replica_comm = comm.Split(color=self.pp_rank * self.tp + self.tp_rank, key=self.replica_rank)
        pp_comm = comm.Split(color=self.replica_rank * self.tp + self.tp_rank, key=self.pp_rank)
        return tp_comm, replica_comm, pp_comm

    def describe(self) -> str:
        cps = f" x cp {self.cp}" if self.cp > 1 else ""
        return f"dp {self.dp}{cps} x tp {self.tp} x pp {self.pp}"
