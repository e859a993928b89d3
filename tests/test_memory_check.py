"""The memory check before training: the predictor's terms, a refusal that names the largest, and the end-of-run line."""
from dataclasses import replace

import pytest

from conftest import describe, mpirun
from parallel_lm.training import memory_check
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
    assert sharded["optimizer"] == pytest.approx(plain["optimizer"] * 12 / 8 / 4)  # + the owned shard's fp32 copy
    assert sharded["weights"] == plain["weights"] and sharded["gradients"] == plain["gradients"]


def test_context_parallelism_keeps_every_weight_and_cuts_the_activations():
    """Each of cp ranks holds the whole model (the position table too: it looks up its own positions) and the
    activations of T/cp tokens; ZeRO shards over every replica, cp ranks included. The check states the layout
    in the cost model's terms (dp: the ways the batch is cut; cp apart)."""
    cfg = replace(config(), global_batch_size=4)
    cut = replace(cfg, cp=2)
    one, two = memory_check.estimate(cfg, cfg.grid(2)), memory_check.estimate(cut, cut.grid(2))
    assert two["weights"] == one["weights"] and two["optimizer"] == one["optimizer"]
    # cp 2 on 2 ranks: each rank holds all 4 rows at T/2 tokens; dp 2: 2 rows at T tokens; the same bytes
    assert two["activations"] == pytest.approx(one["activations"])
    sharded = replace(cut, zero=1)
    assert memory_check.estimate(sharded, sharded.grid(2))["optimizer"] == pytest.approx(one["optimizer"] * 12 / 8 / 2)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_the_check_the_training_formula_and_the_tensors_held_agree_per_parameter(zero, optimizer):
    """One table (costmodel/memory.py's state_bytes) for all three: AdamW 4 + 4 + 8, and 12 under ZeRO, whose
    owned shard is an fp32 copy; SGD 4 + 4 + 0, and 4 under ZeRO. Counted from the tensors a run holds."""
    from mpi4py import MPI

    from parallel_lm.training.data import Batches, load_corpus
    from parallel_lm.model import GPT
    from parallel_lm.parallel.zero import memory_formula
    from parallel_lm.training.trainer import Trainer
    from parallel_lm.costmodel.layout import stage_params
    from parallel_lm.training.utilization import shape_of
    cfg = replace(config(), global_batch_size=2, data="synthetic", zero=zero, optimizer=optimizer)
    trainer = Trainer(cfg, MPI.COMM_SELF, Batches.from_bytes(load_corpus("synthetic"), cfg.model.block_size, cfg.seed))
    trainer.train_step(0)
    held = trainer.memory()
    trainer.close()
    n = GPT(cfg.model).num_params()
    formula = memory_formula(n, zero, 1, optimizer)
    estimate = memory_check.estimate(cfg, cfg.grid(1))
    per_param = {"weights": 4, "gradients": 4, "optimizer": {"adamw": 8, "sgd": 0}[optimizer] + 4 * (zero > 0)}
    for ours, theirs in (("params", "weights"), ("grads", "gradients"), ("optimizer", "optimizer")):
        assert held[ours] == formula[ours] == per_param[theirs] * n, (ours, held, formula)
        assert estimate[theirs] == per_param[theirs] * stage_params(shape_of(cfg.model), 1), (theirs, estimate)


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


def on_a_small_node(tmp_path, args):
    """Train with ``args`` on one rank where /proc/meminfo says 2 MiB are available (a private mount namespace
    binds a fake file over it, so only this process tree sees it); skipped where mount namespaces are refused."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT, mpiexec_path
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:        1048576 kB\nMemFree:          524288 kB\nMemAvailable:       2048 kB\n")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip("needs a private mount namespace (unshare -m, as root) to show the run a small node")
    command = " ".join([mpiexec_path(), "-n", "1", sys.executable, "-m", "parallel_lm.train", *args])
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {fake} /proc/meminfo && exec {command}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_force_trains_past_the_check(tmp_path):
    """The tiny model's ~4 MiB estimate does not fit in 2 MiB: refused without --force, trained with it."""
    args = ["--steps", "1", "--quiet", "--eval-every", "0", "--eval-batches", "1", "--data", "synthetic"]
    refused = on_a_small_node(tmp_path, args)
    assert refused.returncode == 2, describe(refused)
    assert "but 0.0 GiB are available on this node" in refused.stderr and "--force" in refused.stderr, \
        describe(refused)
    forced = on_a_small_node(tmp_path, args + ["--force"])
    assert forced.returncode == 0, describe(forced)
    assert "memory per rank: estimated" in forced.stdout, describe(forced)
