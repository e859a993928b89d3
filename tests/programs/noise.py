"""The fp32 noise floor of a training run on this machine, measured instead of assumed.

K ranks sum a global batch's gradients in another order than one process does. Under AdamW, which divides by
sqrt(v), the rounding of near-zero gradients grows into parameter differences whose size depends on the CPU's
kernels: a shrink test that ended 1.5e-6 from one process on one machine ended 4.5e-5 away on an AVX-512 one.
So an AdamW equivalence test does not compare against a number seen once. It trains the one-process reference
again with its batch summed in pieces (gradient accumulation: the same arithmetic in another order) and allows
FACTOR times the largest difference that makes. A wrong protocol (a lost step, a dropped row, a sum instead of a
mean in the gradient check) moves parameters by far more: one AdamW step is about lr = 3e-3 per parameter.
"""
from __future__ import annotations

from dataclasses import replace

FACTOR = 10  # measured: layouts land 0.3-4x the floor on this machine; 10x leaves room for chaotic growth
SPLITS = (2, 3, 4)  # micro-batch counts; the largest difference of the three is the floor


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def one_process_state(cfg, batches) -> dict:
    """The full state of ``cfg`` trained for its steps on one process (MPI.COMM_SELF): a reference."""
    from mpi4py import MPI

    from parallel_lm.training.trainer import Trainer
    trainer = Trainer(cfg, MPI.COMM_SELF, batches)
    for step in range(cfg.steps):
        trainer.train_step(step)
    state = {k: v.detach().clone() for k, v in trainer.full_state_dict().items()}
    trainer.close()
    return state


def noise_floor(train, cfg, reference: dict) -> float:
    """Largest max|param difference| between ``reference`` (``train(cfg)``, one process) and the same run with its
    batch accumulated in 2, 3 and 4 micro-batches; ``train(cfg) -> state_dict`` runs on one process."""
    rows = cfg.global_batch_size
    own = cfg.micro_batches or 1
    counts = [m for m in SPLITS if m != own and m <= rows] or [own + 1]
    return max(max_difference(reference, train(replace(cfg, micro_batches=m, micro_batch_size=None)))
               for m in counts)


def tolerance(train, cfg, reference: dict) -> float:
    return FACTOR * noise_floor(train, cfg, reference)
