"""python tests/programs/noise_floor.py TRAIN_FLAGS...: noise.py's tolerance for a command-line run, in one process.

Parses TRAIN_FLAGS with python -m parallel_lm.train's own options into the run's TrainConfig, trains it on one
process whole and accumulated in 2, 3 and 4 micro-batches, and prints "TOLERANCE x": noise.FACTOR times the
largest difference (one launch instead of four; conftest.noise_tolerance reads it).
"""
import sys

import torch
from mpi4py import MPI
from noise import tolerance

from parallel_lm.data import Batches, load_corpus
from parallel_lm.train import main, resolve_config
from parallel_lm.train_flags import split
from parallel_lm.trainer import Trainer

torch.set_num_threads(1)
model, values, _ = split(main.make_context("train", sys.argv[1:]).params)
cfg = resolve_config(set(), model, values, None)
batches = Batches.from_bytes(load_corpus(cfg.data, int(cfg.data_max_mb * 2**20)), cfg.model.block_size, cfg.seed)


def one(c) -> dict:
    trainer = Trainer(c, MPI.COMM_SELF, batches)
    for step in range(c.steps):
        trainer.train_step(step)
    state = {k: v.detach().clone() for k, v in trainer.full_state_dict().items()}
    trainer.close()
    return state


print(f"TOLERANCE {tolerance(one, cfg, one(cfg))!r}", flush=True)
