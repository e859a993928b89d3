"""The dp x tp x pp process grid: which ranks work together on what.

World rank r sits at coordinates (pp, dp, tp) with tensor-parallel ranks
innermost (consecutive ranks, on a cluster the GPUs of one node, which
exchange the most), then data parallel, then pipeline stages outermost,
as Megatron-LM lays them out (Shoeybi et al. 2019; Narayanan et al. 2021):

    r = (pp_rank * dp + dp_rank) * tp + tp_rank

Each rank belongs to three groups: its tensor-parallel group (same pp and
dp), its data-parallel group (same pp and tp: the replicas of its shard of
the model) and its pipeline (same dp and tp: the stages it passes
activations along). ``Grid`` owns all of this arithmetic; ``split``
makes the three sub-communicators with ``Comm.Split``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..costmodel.layout import cut_problems


@dataclass(frozen=True)
class Grid:
    dp: int
    tp: int
    pp: int
    rank: int

    @classmethod
    def for_world(cls, world: int, rank: int, dp: int | None = None, tp: int = 1, pp: int = 1) -> "Grid":
        """The grid for ``world`` ranks; ``dp`` defaults to what is left after tp x pp. ValueError names the fix."""
        if tp < 1 or pp < 1 or (dp is not None and dp < 1):
            raise ValueError(f"--dp, --tp and --pp must be >= 1 (got {dp}, {tp}, {pp})")
        if dp is None:
            if world % (tp * pp):
                raise ValueError(f"{world} ranks do not split into --tp {tp} x --pp {pp} groups: "
                                 f"run a multiple of {tp * pp} ranks, or change --tp/--pp")
            dp = world // (tp * pp)
        if dp * tp * pp != world:
            raise ValueError(f"--dp {dp} x --tp {tp} x --pp {pp} = {dp * tp * pp}, but the job has {world} ranks: "
                             f"make the product equal the rank count (e.g. --dp {max(1, world // (tp * pp))} "
                             f"with {max(1, world // (tp * pp)) * tp * pp} ranks)")
        return cls(dp, tp, pp, rank)

    @property
    def size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    def world_rank(self, dp_rank: int, tp_rank: int, pp_rank: int) -> int:
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank

    def tp_group(self) -> list[int]:
        return [self.world_rank(self.dp_rank, t, self.pp_rank) for t in range(self.tp)]

    def dp_group(self) -> list[int]:
        return [self.world_rank(d, self.tp_rank, self.pp_rank) for d in range(self.dp)]

    def all_dp_groups(self) -> list[list[int]]:
        """Every data-parallel group's world ranks, in the order of their (pp, tp) coordinates."""
        return [[self.world_rank(d, t, s) for d in range(self.dp)] for s in range(self.pp) for t in range(self.tp)]

    def pp_group(self) -> list[int]:
        return [self.world_rank(self.dp_rank, self.tp_rank, s) for s in range(self.pp)]

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def check_model(self, n_layer: int, n_head: int, n_embd: int, vocab_size: int) -> None:
        """ValueError naming the fix when the model cannot be cut this way (the heads and layers as the predictor
        checks them too: costmodel/layout.py's ``cut_problems``)."""
        problems = cut_problems(n_layer, n_head, self.tp, self.pp)
        if problems:
            raise ValueError(problems[0])
        if vocab_size % self.tp or (4 * n_embd) % self.tp:
            raise ValueError(f"--tp {self.tp} must divide the vocabulary ({vocab_size}) and the MLP width ({4 * n_embd})")

    def split(self, comm):
        """(tp_comm, dp_comm, pp_comm): sub-communicators whose ranks are tp_rank, dp_rank and pp_rank."""
        tp_comm = comm.Split(color=self.pp_rank * self.dp + self.dp_rank, key=self.tp_rank)
        dp_comm = comm.Split(color=self.pp_rank * self.tp + self.tp_rank, key=self.dp_rank)
        pp_comm = comm.Split(color=self.dp_rank * self.tp + self.tp_rank, key=self.pp_rank)
        return tp_comm, dp_comm, pp_comm

    def describe(self) -> str:
        return f"dp {self.dp} x tp {self.tp} x pp {self.pp}"
