"""The GPU layout model: counts against the papers' closed forms, the published tables, and the predict CLI."""
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import ROOT

from parallel_lm.costmodel.devices import DEVICES, load_device
from parallel_lm.costmodel.formulas import Network
from parallel_lm.costmodel.formulas import all_gather_ring, allreduce_ring
from parallel_lm.costmodel.layout import Layout, hierarchical_allreduce_s, memory_per_gpu
from parallel_lm.costmodel.step import overlap, predict_run
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.costmodel.transformer import ModelShape, megatron_flops

sys.path.insert(0, str(ROOT / "benchmarks"))
import published_runs  # noqa: E402

GPT3 = ModelShape(96, 12288, 96, 2048, 51200)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "parallel_lm.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_parameters_and_flops_follow_megatron_closed_forms():
    l, h, s, v = GPT3.n_layer, GPT3.n_embd, GPT3.seq_len, GPT3.vocab_size
    # the paper's 12lh²(1 + 13/12h + (V+s)/12lh), plus the final LayerNorm's 2h
    assert GPT3.params() == pytest.approx(12 * l * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * l * h)) + 2 * h, rel=1e-14)
    # eq. 3 of Narayanan et al. counts the recomputed forward: our hardware FLOPs with full recompute equal it
    assert GPT3.hardware_flops(1536 * s, "full") == pytest.approx(megatron_flops(GPT3, 1536), rel=1e-12)
    assert GPT3.hardware_flops(s, "full") == pytest.approx(GPT3.model_flops(s) * 4 / 3 - GPT3.logits_flops(s))  # logits not recomputed
    assert GPT3.hardware_flops(s, "selective") - GPT3.model_flops(s) == pytest.approx(l * 4 * s * s * h)


def test_parameters_match_parallel_lm_gpt():
    torch = pytest.importorskip("torch")
    from parallel_lm.model import GPT, PRESETS
    for cfg in PRESETS.values():
        with torch.device("meta"):
            n = GPT(cfg).num_params()
        assert ModelShape(cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.vocab_size).params() == n


@pytest.mark.parametrize("t", [1, 2, 8])
def test_activation_bytes_are_korthikanti_closed_forms(t):
    s, h, a, b = GPT3.seq_len, GPT3.n_embd, GPT3.n_head, 2
    sbh = s * b * h
    act = lambda **kw: GPT3.layer_activation_bytes(b, t, **kw)
    assert act() == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert act(sequence_parallel=True) == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert act(recompute="selective") == pytest.approx(sbh * (10 + 24 / t))
    assert act(sequence_parallel=True, recompute="selective") == pytest.approx(34 * sbh / t)
    assert act(recompute="full") == pytest.approx(2 * sbh)
    no_dropout = replace(GPT3, dropout=False).layer_activation_bytes(b, t)
    assert no_dropout == pytest.approx(act() - sbh * (2 + a * s / (h * t) * 3))  # two masks, and the core's mask + output


def test_state_bytes_per_parameter_by_precision_and_zero():
    lay = Layout(64, 1, dp=8, tp=8, pp=8, precision="bf16")
    mem = memory_per_gpu(GPT3, lay)
    params = (GPT3.n_layer // 8 * GPT3.layer_params() + GPT3.embedding_params()) / 8
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == pytest.approx((2 * params, 4 * params, 12 * params))
    fp32 = memory_per_gpu(GPT3, replace(lay, precision="fp32"))
    assert fp32["weights"] + fp32["gradients"] + fp32["optimizer"] == pytest.approx(16 * params)
    z = {k: memory_per_gpu(GPT3, replace(lay, pp=1, zero=k)) for k in (1, 2, 3)}
    full = memory_per_gpu(GPT3, replace(lay, pp=1))
    assert z[1]["optimizer"] == pytest.approx(full["optimizer"] / 8) and z[1]["gradients"] == full["gradients"]
    assert z[2]["gradients"] == pytest.approx(full["gradients"] / 8) and z[2]["weights"] == full["weights"]
    assert z[3]["weights"] == pytest.approx(full["weights"] / 8)


def test_zero3_gathers_each_stage_block_and_shards_the_weights():
    cl = published_runs.cluster()
    base = Layout(256, 1, dp=8, tp=8, pp=2, recompute="full", precision="bf16")
    z1, z3 = predict_run(GPT3, replace(base, zero=1), cl), predict_run(GPT3, replace(base, zero=3), cl)
    assert z3.memory_bytes["weights"] == pytest.approx(z1.memory_bytes["weights"] / 8)
    assert z3.terms_s["zero3_gather_exposed_s"] >= 0 and z3.step_s >= z1.step_s


def test_interleaving_holds_more_activations_and_shrinks_the_bubble():
    cl = published_runs.cluster()
    base = Layout(64, 1, dp=1, tp=8, pp=8, recompute="full", precision="fp16")
    one, three = predict_run(GPT3, base, cl), predict_run(GPT3, replace(base, virtual_stages=3), cl)
    assert three.terms_s["bubble_s"] == pytest.approx(one.terms_s["bubble_s"] / 3, rel=0.05)
    assert three.memory_bytes["activations"] > one.memory_bytes["activations"]


def test_hierarchical_allreduce_reduces_to_the_flat_ring():
    intra, inter = Network(1e-6, 1e-11), Network(5e-6, 4e-11)
    n = 1e9
    ring = lambda n, p, net: allreduce_ring(n, p, math.inf).time_s(net)
    gather = lambda n, p, net: all_gather_ring(n, p).time_s(net)  # a ring reduce-scatter costs the same here (no gamma)
    assert hierarchical_allreduce_s(n, 8, 1, intra, inter) == pytest.approx(ring(n, 8, intra))
    assert hierarchical_allreduce_s(n, 1, 16, intra, inter) == pytest.approx(ring(n, 16, inter))
    # 8 ranks per node on 8 rails: each ring carries n/8 across nodes; on one shared NIC, 8 times the bytes
    eight = hierarchical_allreduce_s(n, 8, 4, intra, inter, rails=8)
    one = hierarchical_allreduce_s(n, 8, 4, intra, inter, rails=1)
    assert eight == pytest.approx(2 * gather(n, 8, intra) + ring(n / 8, 4, inter))
    assert one - eight == pytest.approx(ring(n / 8, 4, Network(0, 7 * 4e-11)), rel=1e-9)


def test_one_overlap_rule():
    assert overlap(10.0, 4.0, 1.0) == 6.0  # what does not fit behind compute
    assert overlap(10.0, 40.0, 1.0) == 1.0  # never less than the last bucket
    assert overlap(10.0, 40.0, 1.0, enabled=False) == 10.0


def test_layout_problems_name_the_fix():
    probs = " | ".join(Layout(7, 1, dp=4, tp=5, pp=5, virtual_stages=2).problems(GPT3, gpus=64))
    assert "needs 100 GPUs, but --ranks is 64" in probs
    assert "--tp 5 must divide the 96 attention heads: use --tp among 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96" in probs
    assert "--n-layer 96 is not divisible by --pp 5 x --virtual-stages 2" in probs
    assert "--global-batch-size 7 does not split" in probs


def test_published_tables_within_the_goals():
    """Megatron-LM Table 1 and Korthikanti Table 5 / Figure 1 with one set of constants (docs/costmodel.md)."""
    cl = published_runs.cluster()
    t1, t5, mem = published_runs.table_1(cl), published_runs.table_5(cl), published_runs.memory_rows()
    for rows, mean_goal, max_goal in ((t1, 5, 10), (t5, 5, 10), (mem, 10, 10)):
        mean, worst = published_runs.errors(rows)
        assert mean <= mean_goal and worst <= max_goal, (mean, worst, rows)
    predicted = [r["predicted"] for r in t1]
    assert predicted[-1] > predicted[0] * 1.15  # rising with model size, as published (137 -> 163)


def test_zero3_without_model_parallelism_within_the_goals():
    """Narayanan et al. 2021, Table 2: 175B and 530B under ZeRO-3 on 384-2240 A100s (144 down to 44 TFLOP/s). The
    model priced one gradient all-reduce on top of gathers that hid entirely: 37% mean error, 52% max."""
    rows = published_runs.table_2_zero3(published_runs.cluster())
    mean, worst = published_runs.errors(rows)
    assert mean <= 6 and worst <= 14, (mean, worst, rows)
    falling = [r["predicted"] for r in rows[:3]]
    assert falling[0] > 2.5 * falling[2]  # the same model on 4x the GPUs: the gathers dominate, as published
    for r in rows:  # the gradients leave by per-layer reduce-scatters: no all-reduce at the end of the step
        assert r["terms_s"]["dp_comm_exposed_s"] == 0 and r["terms_s"]["zero3_gather_exposed_s"] > 0


def test_zero3_memory_holds_the_gathered_layers():
    """Besides its shards, a ZeRO-3 GPU holds whole layers while they run: the running one and the prefetched
    one, the embedding, and one layer's full gradient before its reduce-scatter (16-bit under mixed precision)."""
    h, s, v = GPT3.n_embd, GPT3.seq_len, GPT3.vocab_size
    layer, embedding = 12 * h * h + 13 * h, (v + s) * h  # Megatron's closed forms
    mem = memory_per_gpu(GPT3, Layout(1024, 1, 1024, zero=3, recompute="full", precision="fp16"))
    assert mem["gathered_layers"] == pytest.approx(2 * (3 * layer + embedding), rel=1e-12)
    assert mem["weights"] == pytest.approx(2 * GPT3.params() / 1024, rel=1e-6)  # the shard alone: 0.33 GiB
    assert "gathered_layers" not in memory_per_gpu(GPT3, Layout(1024, 1, 1024, zero=2, precision="fp16"))
    # context parallelism cuts the tokens, not the position table: the same gathered bytes
    cp = memory_per_gpu(GPT3, Layout(1024, 1, 256, cp=4, zero=3, recompute="full", precision="fp16"))
    assert cp["gathered_layers"] == mem["gathered_layers"]


def test_device_file_replaces_constants(tmp_path):
    f = tmp_path / "dev.json"
    f.write_text(json.dumps({"base": "a100-80gb", "name": "mine", "gemm_efficiency": 0.5}))
    dev = load_device(str(f))
    assert dev.name == "mine" and dev.gemm_efficiency == 0.5 and dev.hbm_bytes_per_s == DEVICES["a100-80gb"].hbm_bytes_per_s
    f.write_text(json.dumps({"gemm_speed": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_device(str(f))
    for dev in DEVICES.values():
        assert {"peak_flops", "hbm_bytes_per_s", "memory_bytes", "gemm_efficiency"} <= set(dev.sources)


def test_every_profile_constant_has_a_source():
    for name in ("dgx-a100-hdr", "dgx-h100-ndr"):
        raw = load_profile(name).raw
        assert set(raw["sources"]) >= {"alpha_s", "beta_s_per_byte"} and raw["rails"] == 8
        assert set(raw["inter_node"]["sources"]) >= {"alpha_s", "beta_s_per_byte"}


def test_predict_states_a_published_run(tmp_path):
    out = tmp_path / "p.json"
    proc = cli("--n-layer", "80", "--n-embd", "12288", "--n-head", "96", "--seq-len", "2048", "--vocab-size", "51200",
               "--ranks", "1536", "--tp", "8", "--pp", "8", "--virtual-stages", "2", "--global-batch-size", "2304",
               "--micro-batch-size", "2", "--recompute", "full", "--precision", "fp16", "--device", "a100-80gb",
               "--profile", "dgx-a100-hdr", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["predictions"][0]
    for key in ("step_s", "tflops_per_gpu", "mfu", "memory_gib_per_gpu", "fits"):
        assert key in row
    assert set(row["memory_gib_parts"]) == {"weights", "gradients", "optimizer", "activations"}
    assert 148 * 0.9 < row["tflops_per_gpu"] < 148 * 1.1 and row["fits"]  # published: 148 TFLOP/s per GPU
    assert row["mfu"] < row["tflops_per_gpu"] * 1e12 / 312e12  # MFU leaves the recomputed forward out
    assert "TFLOP/s counts the recomputed forward" in proc.stdout


@pytest.mark.parametrize("zero", ["0", "3"])
def test_the_printed_terms_add_up_to_the_step(zero):
    """The optimizer's term was once only in --json, so the table's columns fell short of step_s."""
    proc = cli("--preset", "gpt2", "--ranks", "64", "--tp", "2", "--pp", "2",
               "--global-batch-size", "256", "--zero", zero, "--device", "a100-80gb", "--profile", "dgx-a100-hdr")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(x for x in lines if x.split()[:2] == ["gpus", "dp"]).split()
    row = dict(zip(header, lines[lines.index(next(x for x in lines if x.split()[:2] == ["gpus", "dp"])) + 1].split()))
    terms = [c for c in header[header.index("compute"):header.index("GiB/GPU")]]
    assert "optim" in terms and ("gather" in terms) == (zero == "3")
    assert sum(float(row[c]) for c in terms) == pytest.approx(float(row["step_s"]), rel=5e-3), row


def test_predict_says_when_a_run_does_not_fit():
    proc = cli("--n-layer", "96", "--n-embd", "12288", "--n-head", "96", "--seq-len", "2048", "--vocab-size", "51200",
               "--ranks", "8", "--tp", "8", "--global-batch-size", "8", "--device", "a100-80gb")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[4].rstrip().endswith("NO")


@pytest.mark.parametrize("args, message", [
    (["--n-head", "12", "--tp", "5", "--ranks", "10"], "--tp 5 must divide the 12 attention heads"),
    (["--n-layer", "12", "--pp", "4", "--virtual-stages", "2", "--ranks", "8"], "is not divisible by --pp 4 x --virtual-stages 2"),
    (["--global-batch-size", "30", "--ranks", "8"], "--global-batch-size 30 does not split"),
    (["--dp", "4", "--tp", "4", "--ranks", "8"], "needs 16 GPUs, but --ranks is 8"),
    (["--ranks", "8", "--tp", "3", "--n-head", "12"], "--ranks 8 is not divisible by --tp 3"),
    (["--n-embd", "100", "--n-head", "12"], "--n-embd 100 is not divisible by --n-head 12"),
    (["--device", "tpu"], "a100-80gb"),
    (["--precision", "fp8"], "fp8"),
])
def test_predict_refuses_bad_layouts_with_the_fix(args, message):
    proc = cli(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


LONG = ModelShape(32, 4096, 32, 8192, 51200)  # 8K context: attention weighs


def test_flash_attention_skips_the_masked_half_and_keeps_no_scores():
    """--attention flash: the core's GEMMs at half the work (causal tiles skipped), none of its element-wise bytes,
    2.5 forwards of it in backward, no scores kept (a log-sum-exp per row instead), nothing to recompute."""
    from parallel_lm.costmodel.step import FLASH_CAUSAL, layer_times
    flash = replace(LONG, fused_attention=True)
    lay = Layout(64, 1, 8, tp=8, precision="bf16")
    dev = DEVICES["h100-sxm"]
    plain, fused = layer_times(LONG, lay, dev), layer_times(flash, lay, dev)
    assert fused["core_s"] == pytest.approx(FLASH_CAUSAL * plain["core_s"]) and fused["core_bytes"] == 0
    assert fused["weights_s"] == plain["weights_s"] and fused["rest_bytes"] == plain["rest_bytes"]
    a, s = LONG.n_head, LONG.seq_len
    kept = LONG.layer_activation_bytes(1, 8, bytes_per_value=2) - flash.layer_activation_bytes(1, 8, bytes_per_value=2)
    assert kept == pytest.approx(((2 + 1 + 2) * a * s * s - 4 * a * s) / 8)  # softmax, mask, dropout vs log-sum-exp
    cl = published_runs.cluster(DEVICES["h100-sxm"])
    selective = predict_run(flash, replace(lay, recompute="selective"), cl)
    assert selective.step_s == pytest.approx(predict_run(flash, lay, cl).step_s)  # a fused core is never kept
    assert predict_run(flash, lay, cl).step_s < 0.7 * predict_run(LONG, lay, cl).step_s


def test_context_parallel_attention_memory_meets_every_key():
    """Under --cp a GPU's s/cp queries each meet all s keys, in time and in memory: the scores selective
    recomputation drops are a·(s/cp)·s values per sequence, not a·(s/cp)²."""
    lay = Layout(8, 1, 1, cp=4, precision="bf16")
    none, sel = memory_per_gpu(LONG, lay)["activations"], memory_per_gpu(LONG, replace(lay, recompute="selective"))["activations"]
    a, s, cp = LONG.n_head, LONG.seq_len, 4
    assert none - sel == pytest.approx(LONG.n_layer * (2 + 1 + 2) * a * (s // cp) * s)


def test_pipeline_neighbours_across_nodes_when_tp_times_cp_fills_a_node():
    """Stages are tp x cp x dp ranks apart: with tp 2 and cp 4 on 8-GPU nodes they sit on different nodes."""
    cl = published_runs.cluster()
    lay = Layout(8, 1, 1, tp=2, pp=2, cp=4, precision="fp16")
    shape = ModelShape(8, 4096, 32, 8192, 51200)
    act = lay.micro_batch * shape.seq_len // lay.cp * shape.n_embd * 2
    piece = act / lay.tp  # scatter/gather: each tensor rank sends its part on its own NIC
    want = lay.micro_batches * 2 * (cl.inter.alpha_s + piece * cl.inter.beta_s_per_byte)
    got = predict_run(shape, lay, cl).terms_s["pp_comm_s"]
    gather = all_gather_ring(act, lay.tp).time_s(cl.intra) * 2 * lay.micro_batches
    assert got == pytest.approx(want + gather)


LLAMA3 = published_runs.LLAMA3  # Llama 3 405B


def test_the_llama_shape_counts_what_its_parts_hold():
    """--arch llama: SwiGLU (three h x f matrices), grouped-query attention, RMSNorm and no biases, rotary
    positions (no parameters), a head of its own: Llama 3's 405B."""
    h, f, kv, v, l = 16384, 53248, 8 * 128, 128256, 126
    layer = h * (h + 2 * kv) + h * h + 3 * h * f + 2 * h
    assert LLAMA3.layer_params() == layer
    assert LLAMA3.params() == l * layer + 2 * v * h + h and LLAMA3.params() == pytest.approx(405.85e9, rel=1e-4)
    tokens, s = 1000, 8192
    assert LLAMA3.layer_forward_flops(tokens) == 2 * tokens * h * (2 * h + 2 * kv + 3 * f) + 4 * tokens * s * h


def test_uneven_stages_are_checked_and_the_slowest_paces_the_pipeline():
    even, cl = ModelShape(128, 4096, 32, 2048, 51200), published_runs.cluster()
    base = Layout(64, 1, 1, tp=8, pp=16, precision="bf16")
    same = replace(base, stage_layers=(8,) * 16)
    assert predict_run(even, same, cl).step_s == pytest.approx(predict_run(even, base, cl).step_s, rel=1e-12)
    lighter_ends = replace(base, stage_layers=(7,) + (8,) * 14 + (7,))
    assert not lighter_ends.problems(replace(even, n_layer=126))
    assert "add up to --n-layer 128" in " ".join(lighter_ends.problems(even))
    assert "add up to" in " ".join(replace(base, stage_layers=(8,) * 15).problems(even))  # one count per stage
    # the head makes the last stage the slowest: one layer fewer there shortens the step
    heavy_end = replace(base, stage_layers=(8,) * 15 + (7,), global_batch=64)
    assert predict_run(replace(even, n_layer=127), heavy_end, cl).step_s < \
        predict_run(replace(even, n_layer=127), replace(base, stage_layers=(7,) + (8,) * 15), cl).step_s


def test_llama3_405b_stated_as_it_ran_fits_and_calibrated_on_one_row_predicts_the_others():
    """Dubey et al. 2024, Table 4 (BF16 MFU on H100s; tp 8, pp 16) as section 3.3.2 describes it: 126 layers with
    one fewer on the first and last stage, whose first and last chunks hold only the embedding and the head (chunks
    of one layer: 8 virtual stages), FSDP sharding gradients and optimizer state (ZeRO-2). It fits in 80 GB (with
    interleaving 2 and ZeRO-1, as first assumed, it did not: 101 GiB). Megatron's constants run 20-26% fast on
    Llama 3's stack; calibrated on the 8,192-GPU row, the other two rows come within 2%."""
    raw, calibrated = published_runs.table_4_llama3(False), published_runs.table_4_llama3(True)
    assert all(r["fits"] and r["memory_gib"] < 74.5 for r in calibrated), calibrated  # 80 GB
    assert all(1.15 < r["predicted"] / r["published"] < 1.3 for r in raw), raw
    assert calibrated[0]["predicted"] == pytest.approx(calibrated[0]["published"], rel=1e-3)  # the fitted row
    for r in calibrated[1:]:  # the predicted ones
        assert r["predicted"] == pytest.approx(r["published"], rel=0.05), r
    first = memory_per_gpu(replace(LLAMA3, seq_len=8192), replace(published_runs.llama3_layout(16384, 1, 2048),
                                                                   virtual_stages=2, zero=1))
    assert sum(first.values()) / 2**30 > 100  # the first statement's 101 GiB


def test_every_published_row_within_the_goals_and_every_run_that_ran_fits():
    """The issue's goal over all of them: mean |error| <= 7%, max <= 15%, fits for every run that ran."""
    cl = published_runs.cluster()
    llama = published_runs.table_4_llama3(True)
    ptdp, zero3 = published_runs.table_2_ptdp(cl), published_runs.table_2_zero3(cl)
    rows = (published_runs.table_1(cl) + ptdp + zero3 + published_runs.table_5(cl) + published_runs.memory_rows()
            + llama[1:])
    mean, worst = published_runs.errors(rows)
    assert mean <= 7 and worst <= 15, (mean, worst)
    assert all(r["fits"] for r in ptdp + zero3 + llama)


def test_deepspeed_gathers_weight_by_weight():
    """--zero3-gather matrix: three of the largest weight matrices live instead of three whole layers; the 530B
    ZeRO-3 run on 640 A100s fits that way (72 GiB), as it ran, and not with whole layers (92 GiB)."""
    shape, h = ModelShape(105, 20480, 128, 2048, 51200), 20480
    lay = Layout(2560, 4, 640, zero=3, recompute="full", precision="fp16")
    layers, matrices = (memory_per_gpu(shape, replace(lay, zero3_gather=g)) for g in ("layer", "matrix"))
    assert matrices["gathered_layers"] == pytest.approx(2 * 3 * 4 * h * h, rel=1e-12)  # the MLP's 4h x h, fp16
    assert sum(matrices.values()) / 2**30 < 74.5 < sum(layers.values()) / 2**30
    assert "--zero3-gather 'rows'" in " ".join(replace(lay, zero3_gather="rows").problems(shape))
