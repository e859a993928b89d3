"""The memory check before training: the predictor's terms, a refusal that names the largest, and the end-of-run line."""
from dataclasses import replace

import pytest

from conftest import describe, mpirun
from parallel_lm import memory_check
from parallel_lm.config import TrainConfig
from parallel_lm.model import PRESETS


def config(**model):
    return TrainConfig(model=replace(PRESETS["tiny"], **model))


def test_activations_grow_with_the_block_and_zero_shards_the_optimizer():
    cfg = config()
    short, long = memory_check.estimate(cfg, cfg.grid(1)), memory_check.estimate(config(block_size=640), cfg.grid(1))
    assert long["activations"] == pytest.approx(10 * short["activations"])  # no T x T scores: linear in T
    assert long["logits"] == pytest.approx(10 * short["logits"])
    zero = replace(cfg, global_batch_size=32, zero=1)
    plain, sharded = memory_check.estimate(cfg, cfg.grid(4)), memory_check.estimate(zero, zero.grid(4))
    assert sharded["optimizer"] == pytest.approx(plain["optimizer"] / 4)
    assert sharded["weights"] == plain["weights"] and sharded["gradients"] == plain["gradients"]


def test_a_run_that_cannot_fit_is_refused_naming_the_largest_term_and_the_fix():
    cfg = config(block_size=100000)
    with pytest.raises(ValueError, match=r"activations .* at --block-size 100000.*lower --micro-batch-size"):
        memory_check.check(cfg, cfg.grid(1), ranks_here=1, available=24 * 2**30)
    terms = memory_check.check(cfg, cfg.grid(1), ranks_here=1, available=None)  # unknown memory (or --force)
    assert sum(terms.values()) > 24 * 2**30
    small = config()
    with pytest.raises(ValueError, match=r"4 rank\(s\) x that"):  # the ranks of one node share its memory
        memory_check.check(small, small.grid(1), ranks_here=4, available=sum(memory_check.estimate(small, small.grid(1)).values()) * 3)


def test_a_run_prints_the_estimate_beside_the_measured_peak():
    proc = mpirun(2, ["-m", "parallel_lm.train", "--steps", "2", "--quiet", "--eval-every", "0", "--eval-batches", "1",
                      "--data", "synthetic"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("memory per rank: estimated"))
    estimated = float(line.split("estimated ")[1].split(" MiB")[0])
    measured = float(line.split("measured peak ")[1].split(" MiB")[0])
    assert 0 < estimated and 0 < measured


def test_force_trains_past_the_check():
    # --block-size 2000 with a tiny model fits anywhere; --force must simply be accepted and train
    proc = mpirun(1, ["-m", "parallel_lm.train", "--steps", "1", "--quiet", "--eval-every", "0", "--eval-batches", "1",
                      "--data", "synthetic", "--block-size", "200", "--force"], timeout=120)
    assert proc.returncode == 0, describe(proc)
