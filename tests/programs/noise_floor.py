"""python tests/programs/noise_floor.py TRAIN_FLAGS...: noise.py's tolerance for a command-line run, in one process.

Parses TRAIN_FLAGS with python -m parallel_lm.train's own options into the run's TrainConfig, trains it on one
process whole and accumulated in 2, 3 and 4 micro-batches, and prints "TOLERANCE x": noise.FACTOR times the
largest difference (one launch instead of four; conftest.noise_tolerance reads it).
"""
import sys

import torch
from noise import one_process_state, tolerance

from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.train import main, resolve_config
from parallel_lm.train_flags import split

torch.set_num_threads(1)
model, values, _ = split(main.make_context("train", sys.argv[1:]).params)
cfg = resolve_config(set(), model, values, None)
batches = Batches.from_bytes(load_corpus(cfg.data, int(cfg.data_max_mb * 2**20)), cfg.model.block_size, cfg.seed)
one = lambda c: one_process_state(c, batches)
print(f"TOLERANCE {tolerance(one, cfg, one(cfg))!r}", flush=True)
