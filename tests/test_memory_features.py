"""ZeRO-3, activation recomputation and interleaved 1F1B: the same training as one process, and what each saves."""
import json
import re

import pytest

from conftest import check_cases, describe, mpirun
from test_layouts import layouts


@layouts(4, "zero3", "zero3-accum", "zero3-no-prefetch", "zero3-sgd", "zero3-recompute")
def test_zero3_trains_like_one_process_holding_a_shard_and_at_most_two_layers(marked_cases):
    """Parameters, gradients and optimizer state at 1/dp each (the formula, to 0.00%); whole layers only
    while they run and while the next one is prefetched; accumulation, no prefetch, SGD, recompute."""
    assert all(r["memory_worst"] < 5e-5 for r in check_cases(marked_cases).values()), marked_cases  # "0.00% off" the formula


@layouts(3, "zero3", "zero3-accum")
def test_zero3_on_three_ranks(marked_cases):
    check_cases(marked_cases)


@layouts(4, "dp2-pp2-zero3", "dp2-tp2-zero3-bf16", "dp2-pp2-v2-zero3-fp16")
def test_zero3_composes_with_pipelines_tensor_parallelism_interleaving_and_mixed_precision(marked_cases):
    check_cases(marked_cases)


@layouts(1, "recompute-full", "recompute-selective")
def test_recomputation_gives_the_gradients_of_the_run_without_it_bitwise(marked_cases):
    assert all(r["diff"] == 0.0 for r in check_cases(marked_cases).values()), marked_cases


@layouts(4, "dp2-tp2-recompute-full-bf16", "tp2-pp2-recompute-selective-accum")
def test_recomputation_composes_with_tensor_and_pipeline_parallelism(marked_cases):
    check_cases(marked_cases)


@layouts(2, "pp2-v2", "pp2-v2-m2")
@layouts(4, "pp4-v1-m4", "dp2-pp2-v2-zero2", "dp2-pp2-v2-bucketed", "tp2-pp2-v2-fp16", "dp2-pp2-v2-recompute")
def test_interleaved_pipelines_train_like_one_process(marked_cases):
    check_cases(marked_cases)


def activations(stdout):
    m = re.search(r"measured ([\d.]+) MiB per micro-batch(?: through one of \d+ chunks)?, formula ([\d.]+) MiB", stdout)
    return float(m.group(1)), float(m.group(2))


TRAIN = ["-m", "parallel_lm.train", "--eval-every", "0", "--quiet"]


@pytest.mark.runs(1, **{mode: TRAIN + ["--preset", "small", "--steps", "1", "--recompute", mode]
                        for mode in ("none", "selective", "full")})
def test_measured_activation_memory_meets_the_formula_and_recomputation_shrinks_it(runs):
    seen = {}
    for mode in ("none", "selective", "full"):
        proc = runs[mode]
        assert proc.returncode == 0, describe(proc)
        have, want = activations(proc.stdout)
        assert abs(have / want - 1) < 0.02, describe(proc)  # the formula counts every stored tensor
        assert "HFU" in proc.stdout and f"recompute {mode} counted" in proc.stdout
        seen[mode] = have
    assert seen["full"] < seen["none"] / 5 and seen["selective"] < seen["none"]


@pytest.mark.runs(1, run=TRAIN + ["--steps", "2", "--recompute", "full", "--peak-tflops", "0.001"])
def test_utilization_counts_recomputed_flops_in_hfu_only(runs):
    proc = runs["run"]
    assert proc.returncode == 0, describe(proc)
    mfu, hfu = map(float, re.search(r"MFU ([\d.]+)%.*HFU ([\d.]+)%", proc.stdout).groups())
    assert 1.2 < hfu / mfu < 1.45  # one more forward of the blocks: 4/3 of the matmul FLOPs, less the head's
    assert "HFU above 90%: the peak is too low" in proc.stdout  # 1 GFLOP/s is below what this model reaches


def test_mfu_is_over_the_best_peak_this_machine_has_seen_and_a_busy_machine_is_named(tmp_path):
    """A probe taken while other work ran once gave 2.3 GFLOP/s, and MFU 98%: the best probe recorded stands."""
    home = {"HOME": str(tmp_path)}
    args = ["-m", "parallel_lm.train", "--eval-every", "0", "--quiet", "--steps", "2"]
    proc = mpirun(1, args, env=home)
    assert proc.returncode == 0, describe(proc)
    cache = tmp_path / ".cache" / "parallel_lm" / "matmul-peak.json"
    seen = json.loads(cache.read_text())
    (key, first), = seen.items()
    probed = float(re.search(r"fp32 matmul on \d+ core\(s\): ([\d.]+) GFLOP/s", proc.stdout).group(1))
    assert first["flops"] / 1e9 == pytest.approx(probed, abs=0.051)
    cache.write_text(json.dumps({key: {"flops": 100 * first["flops"], "measured": "2026-01-02 03:04"}}))
    proc = mpirun(1, args, env=home)  # now this machine's probe reads as 1/100 of its best: a busy machine
    assert proc.returncode == 0, describe(proc)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("utilization:"))
    assert f"{100 * first['flops'] / 1e9:.1f} GFLOP/s, the best probe here, 2026-01-02 03:04" in line, line
    assert "the machine is busy now" in line, line
    assert json.loads(cache.read_text())[key]["flops"] == 100 * first["flops"]  # a lower probe never replaces it


@pytest.mark.parametrize("p,m", [(2, 2), (2, 6), (4, 4), (4, 8), (3, 9)])
def test_the_interleaved_schedule_has_the_bubble_of_the_formula_and_never_waits_in_a_cycle(p, m):
    """Each rank's ops in schedule order, equal chunk costs (backward twice forward), no message time."""
    from parallel_lm.parallel.schedules import bubble_formula, ideal_bubble
    for v in (1, 2, 3):
        assert ideal_bubble("1f1b", m, p, v) == pytest.approx(bubble_formula(p, m, v), abs=1e-12)
    assert bubble_formula(p, m, 2) < bubble_formula(p, m, 1)


@pytest.mark.runs(2, run=TRAIN + ["--pp", "2", "--virtual-stages", "2", "--micro-batches", "4", "--steps", "2",
                                  "--n-layer", "4", "--global-batch-size", "16", "--out", "{out}"])
def test_an_interleaved_run_records_its_bubble_beside_the_formula(runs):
    proc = runs["run"]
    assert proc.returncode == 0, describe(proc)
    assert "interleaved 1F1B, 2 chunks per rank" in proc.stdout, describe(proc)
    have, want = activations(proc.stdout)
    assert abs(have / want - 1) < 0.02 and "at most 5 in flight" in proc.stdout, describe(proc)  # 2.5 stages' worth
    rows = [json.loads(line) for line in (proc.out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bubble_formula"] == pytest.approx(1 / 9) and 0 <= rows[-1]["bubble"] < 1


@pytest.mark.runs(2, run=TRAIN + ["--zero", "3", "--steps", "1"])
def test_zero3_prints_memory_per_rank_beside_the_formula(runs):
    proc = runs["run"]
    assert proc.returncode == 0, describe(proc)
    assert "ZeRO-3 memory per rank: params" in proc.stdout and "whole layers at once" in proc.stdout
