"""The graded exercises: one entry per exercise, its checker and the rank counts it is checked on.

An exercise's reference solution is ``solutions/exLL_N_<slug>.py``; the
learner's stub is the same file with the bodies emptied (``stubs.py``).
A checker is a generator ``check(module, comm, rng)`` run on every rank:
it calls the learner's functions on cases drawn from ``rng`` (the same
on every rank) and yields ``(description, failure)`` per case, where
failure is None or, on this rank, what was wrong and what was expected.
The rank counts are ones the lessons do not run (3, 5 and 6: no powers of
two, but for 19.1's 4 and 6, which its nodes of 2 and 3 divide), so a
solution tuned to the lesson's own run is caught.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import checks_collectives as coll
from . import checks_models as models
from . import checks_plans as plans

SOLUTIONS = Path(__file__).resolve().parent / "solutions"


@dataclass(frozen=True)
class Exercise:
    id: str  # lesson.exercise, e.g. "03.1"
    slug: str
    title: str
    ranks: tuple[int, ...]  # one mpiexec launch per rank count, in this order
    check: Callable
    checks_cost: bool = False  # the checker also compares messages, calls or time with the formula
    timeout_s: float = 90.0

    @property
    def lesson(self) -> str:
        return self.id.split(".")[0]

    @property
    def filename(self) -> str:
        return f"ex{self.id.replace('.', '_')}_{self.slug}.py"

    @property
    def solution(self) -> Path:
        return SOLUTIONS / self.filename


EXERCISES = [
    Exercise("01.1", "pass_right", "pass an array to the right neighbour with Sendrecv", (3, 5), coll.check_pass_right),
    Exercise("02.1", "tree_reduce", "binomial-tree reduce onto any root", (3, 5), coll.check_tree_reduce,
             checks_cost=True),
    Exercise("03.1", "ring_allreduce", "ring all-reduce: reduce-scatter then all-gather", (3, 5),
             coll.check_ring_allreduce, checks_cost=True),
    Exercise("04.1", "recursive_doubling", "recursive doubling on any number of ranks (fold the extras)", (3, 6),
             coll.check_recursive_doubling, checks_cost=True),
    Exercise("05.1", "fit_alpha_beta", "fit alpha and beta to timings that span six decades", (1,),
             plans.check_fit_alpha_beta, checks_cost=True),
    Exercise("06.1", "average_gradients", "data-parallel SGD: average the gradients", (3, 5),
             models.check_average_gradients),
    Exercise("07.1", "bucketed_allreduce", "gradient buckets: one all-reduce per bucket", (3,),
             coll.check_bucketed_allreduce, checks_cost=True),
    Exercise("08.1", "ps_round", "one synchronous parameter-server round", (3, 5), coll.check_ps_round),
    Exercise("09.1", "row_parallel_linear", "a row-parallel linear layer", (3, 5), models.check_row_parallel_linear),
    Exercise("10.1", "pipeline_forward", "a pipeline forward pass over micro-batches", (3, 5),
             models.check_pipeline_forward, checks_cost=True),
    Exercise("11.1", "zero1_step", "a ZeRO-1 step: each rank updates its shard", (3, 5), models.check_zero1_step),
    Exercise("12.1", "ring_all_gather", "a ring all-gather, run on the simulator's virtual ranks", (1,),
             plans.check_ring_all_gather, checks_cost=True),
    Exercise("13.1", "loss_scaler", "a dynamic loss scaler the ranks agree on", (3,), models.check_loss_scaler),
    Exercise("14.1", "model_state_bytes", "model state per GPU under tp, pp and ZeRO", (1,),
             plans.check_model_state_bytes, checks_cost=True),
    Exercise("15.1", "activation_bytes", "activation memory per layer (Korthikanti et al.)", (1,),
             plans.check_activation_bytes, checks_cost=True),
    Exercise("16.1", "save_atomic", "a checkpoint that survives a crash while it is written", (1,),
             plans.check_save_atomic),
    Exercise("17.1", "ring_attention", "attention over keys spread around a ring, with an online softmax", (3, 5),
             models.check_ring_attention, checks_cost=True),
    Exercise("18.1", "all_to_all", "a pairwise all-to-all", (3, 5), coll.check_all_to_all, checks_cost=True),
    Exercise("19.1", "hierarchical_allreduce", "a two-level all-reduce over nodes", (4, 6),
             coll.check_hierarchical_allreduce),
    Exercise("20.1", "allreduce_tensor", "sum a torch tensor in place and a JAX array into a new one", (2, 3),
             models.check_allreduce_tensor),
]
BY_ID = {e.id: e for e in EXERCISES}


def find(exercise_id: str) -> Exercise:
    key = exercise_id if "." in exercise_id else f"{exercise_id}.1"
    if len(key.split(".")[0]) == 1:
        key = "0" + key
    if key not in BY_ID:
        raise KeyError(f"no exercise {exercise_id!r}; `python -m parallel_lm.exercises list` shows them all "
                       f"({', '.join(BY_ID)})")
    return BY_ID[key]
