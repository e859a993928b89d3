"""Model-parallel layouts and ZeRO under mpiexec: the same training as one process, and clear errors."""
import pytest

from conftest import PROGRAMS, assert_cases, check_cases, describe, mpirun


def layouts(k, *names):
    """Mark a test with layout_equivalence.py's cases ``names`` on k ranks (conftest: one launch per k for all)."""
    return pytest.mark.cases("layout_equivalence.py", k, *names)


@layouts(4, "zero1", "zero2", "zero2-accum", "zero1-sgd")
def test_zero_stages_train_like_one_process_and_shrink_memory_as_the_formula_says(marked_cases):
    assert all(r["memory_worst"] < 5e-5 for r in check_cases(marked_cases).values()), marked_cases  # "0.00% off" the formula


@layouts(3, "zero2")
def test_zero_on_three_ranks(marked_cases):
    check_cases(marked_cases)


TRAIN = ["-m", "parallel_lm.train", "--steps", "2", "--eval-every", "0", "--quiet"]


def train(k, *args, timeout=180):
    return mpirun(k, [*TRAIN, *args], timeout=timeout)


@pytest.mark.runs(2, run=TRAIN + ["--zero", "1", "--preset", "tiny"])
def test_zero_prints_memory_per_rank_beside_the_formula(runs):
    proc = runs["run"]
    assert proc.returncode == 0, describe(proc)
    assert "ZeRO-1 memory per rank: params" in proc.stdout and "without ZeRO" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--dp", "3", "--tp", "2"], "= 6, but the job has 4 ranks"),
    (["--tp", "4", "--n-head", "2", "--n-embd", "64"], "divide the 2 attention heads"),
    (["--pp", "4", "--n-layer", "2"], "divide the 2 layers"),
    (["--zero", "1", "--sync", "ps"], "--sync ps shards the whole model"),
    (["--pp", "2", "--engine", "torch-ddp"], "--engine torch-ddp with --pp > 1"),
    (["--zero", "2", "--engine", "torch-ddp"], "use --engine explicit"),
])
def test_invalid_layouts_stop_every_rank_with_the_fix(args, message):
    proc = train(4, *args)
    assert proc.returncode == 2 and message in proc.stderr, describe(proc)


@layouts(4, "llama-dp", "llama-zero1", "llama-tp2", "llama-tp4-sp", "llama-pp2", "llama-pp4-1f1b", "llama-cp2",
         "llama-cp4", "llama-cp2-tp2-sp", "llama-tp2-pp2-sp", "llama-dp2-pp2-v2-zero2", "llama-zero3",
         "llama-dp2-tp2-zero3-bf16", "llama-cp2-pp2-recompute", "llama-tp2-recompute-full",
         "gqa-dp", "gqa-tp2-sp", "gqa-cp4", "gqa-cp2-tp2", "gqa-pp2-zero3")
def test_the_llama_block_trains_like_one_process_under_every_kind_of_parallelism(marked_cases):
    """SwiGLU cut in two sections, rotary at each context rank's own positions, the untied head's own
    vocabulary slices, RMSNorm under sequence parallelism, grouped-query attention's key/value heads cut over
    tensor ranks and travelling the context ring unwidened: each layout equal to one process."""
    check_cases(marked_cases)


@layouts(2, "pp2-gpipe", "pp2-1f1b")
def test_pipelines_train_like_one_process_under_both_schedules(marked_cases):
    check_cases(marked_cases)


@layouts(4, "pp4-1f1b", "dp2-pp2-zero1")
def test_four_stages_and_a_pipeline_with_zero_and_data_parallel(marked_cases):
    check_cases(marked_cases)


def test_a_pipeline_run_checkpoints_the_full_model(tmp_path):
    import torch
    proc = train(2, "--pp", "2", "--micro-batches", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, describe(proc)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    from parallel_lm.model import GPT, PRESETS
    assert list(state["model"]) == list(GPT(PRESETS["tiny"]).state_dict())
    resumed = train(1, "--resume", str(tmp_path), "--steps", "3")  # another layout evaluates and resumes it
    assert resumed.returncode == 0, describe(resumed)


@pytest.mark.parametrize("k", [2, 4])
def test_tensor_parallel_layers_match_plain_layers_forward_and_backward(k):
    proc = mpirun(k, [str(PROGRAMS / "tp_layers.py")], timeout=120)
    kinds = (("attention", ("qkv", "proj")), ("mlp", ("fc", "proj")), ("llama attention", ("q", "kv", "proj")),
             ("llama gated mlp", ("gate_up", "proj")))
    layers = [f"{name} {what}" for name, weights in kinds
              for what in ("forward", "input grad", *(f"{leaf}.weight grad" for leaf in weights))]
    assert_cases(proc, layers + ["embedding forward", "vocab-parallel cross-entropy", "tied embedding + head grad"])


@layouts(2, "tp2")
def test_tensor_parallel_training_matches_one_process(marked_cases):
    check_cases(marked_cases)


@layouts(4, "tp4", "dp2-tp2", "dp2-tp2-zero2")
def test_tp4_and_dp2_tp2_with_and_without_zero2(marked_cases):
    check_cases(marked_cases)


@layouts(8, "dp2-tp2-pp2-zero1", "dp2-tp2-pp2-zero2-bf16-comm16")
def test_dp2_tp2_pp2_with_zero1_matches_one_process(marked_cases):
    check_cases(marked_cases)


@layouts(4, "dp2-pp2-zero2", "dp2-pp2-comm16", "dp2-pp2-bf16-zero1", "dp2-pp2-fp16-no-overlap", "tp2-pp2-fp16-zero2")
def test_the_combination_matrix_with_pipelines_matches_one_process(marked_cases):
    """ZeRO-2 under a pipeline (the tied embedding summed before sharding), fp16 gradients, bf16, fp16 with loss
    scaling, overlap off: each pair of these options meets in some case."""
    check_cases(marked_cases)


@layouts(4, "dp2-tp2-naive-accum", "dp2-tp2-fp16", "dp2-tp2-zero1-comm16-accum", "dp2-tp2-ddp", "ddp-fp16-comm16-accum")
def test_the_combination_matrix_with_tensor_parallelism_matches_one_process(marked_cases):
    check_cases(marked_cases)


def test_the_full_grid_from_the_command_line(tmp_path):
    proc = train(8, "--dp", "2", "--tp", "2", "--pp", "2", "--zero", "1", "--preset", "small", "--global-batch-size",
                 "16", "--micro-batches", "2", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, describe(proc)
    assert "layout: dp 2 x tp 2 x pp 2" in proc.stdout and (tmp_path / "checkpoint.pt").is_file()


def test_a_failing_stage_ends_the_whole_pipeline_job():
    import time
    t0 = time.monotonic()
    proc = mpirun(4, ["-m", "parallel_lm.train", "--steps", "5", "--eval-every", "0", "--quiet", "--pp", "2",
                      "--tp", "2", "--micro-batches", "2"], timeout=120, env={"PARALLEL_LM_FAIL_AT": "3:1"})
    assert proc.returncode != 0 and "failing on purpose" in proc.stderr, describe(proc)
    assert time.monotonic() - t0 < 60


@layouts(2, "tp2-sp", "tp2-sp-recompute", "tp2-sp-bf16")
@layouts(4, "tp4-sp", "dp2-tp2-sp-zero1", "tp2-pp2-sp")
def test_sequence_parallel_trains_like_one_process(marked_cases):
    check_cases(marked_cases)


def _activations(proc) -> tuple[float, float]:
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("activations"))
    measured = float(line.split("measured ")[1].split(" MiB")[0])
    formula = float(line.split("formula ")[1].split(" MiB")[0])
    return measured, formula


@pytest.mark.runs(4, plain=TRAIN + ["--tp", "4", "--preset", "small"],
                  sp=TRAIN + ["--tp", "4", "--preset", "small", "--sequence-parallel"])
def test_sequence_parallel_cuts_activation_memory_as_the_formula_says(runs):
    plain, sp = runs["plain"], runs["sp"]
    assert plain.returncode == 0 and sp.returncode == 0, describe(sp)
    (have, want), (have_sp, want_sp) = _activations(plain), _activations(sp)
    assert have == pytest.approx(want, rel=0.02) and have_sp == pytest.approx(want_sp, rel=0.02)
    # LayerNorm and GEMM inputs (4 of Korthikanti's 10 sbh-sized terms here) drop to T/t per rank
    assert have_sp < 0.6 * have


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ring_attention_equals_full_causal_attention_forward_and_backward(k):
    proc = mpirun(k, [str(PROGRAMS / "ring_attention.py")], timeout=120)
    assert_cases(proc, [f"T{t} {what}" for t in (4 * k, 16 * k) for what in ("output", "dQ", "dK", "dV")])


@layouts(2, "cp2", "cp2-zero2", "cp2-recompute")
@layouts(4, "cp4", "cp2-dp2", "cp2-tp2", "cp2-tp2-sp", "cp2-pp2")
def test_context_parallel_trains_like_one_process(marked_cases):
    check_cases(marked_cases)


@pytest.mark.runs(1, cp1=TRAIN + ["--cp", "1", "--preset", "small", "--global-batch-size", "8"])
@pytest.mark.runs(2, cp2=TRAIN + ["--cp", "2", "--preset", "small", "--global-batch-size", "8"])
@pytest.mark.runs(4, cp4=TRAIN + ["--cp", "4", "--preset", "small", "--global-batch-size", "8"])
def test_context_parallel_cuts_activation_memory_by_cp(runs):
    got = [runs[f"cp{cp}"] for cp in (1, 2, 4)]
    assert all(r.returncode == 0 for r in got), [describe(r) for r in got]
    (one, f1), (two, f2), (four, f4) = (_activations(r) for r in got)
    assert two == pytest.approx(one / 2, rel=0.1) and four == pytest.approx(one / 4, rel=0.1)
    assert f2 == pytest.approx(f1 / 2, rel=0.01) and two == pytest.approx(f2, rel=0.1)
