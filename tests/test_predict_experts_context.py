"""The predictor prices context and expert parallelism: memory, ring attention and the all-to-all, by formula."""
import pytest

from parallel_lm.costmodel.devices import load_device
from parallel_lm.costmodel.formulas import Network, all_to_all_pairwise
from parallel_lm.costmodel.layout import Cluster, Layout, memory_per_gpu
from parallel_lm.costmodel.step import predict_run
from parallel_lm.costmodel.transformer import ModelShape

SHAPE = ModelShape(n_layer=8, n_embd=1024, n_head=16, seq_len=8192, vocab_size=32000)
MOE = ModelShape(n_layer=8, n_embd=1024, n_head=16, seq_len=2048, vocab_size=32000, n_experts=16, top_k=2)


def cluster(inter=Network(5e-6, 1 / 50e9), ranks_per_node=8):
    return Cluster(load_device("h100-sxm"), Network(2e-6, 1 / 450e9), inter, ranks_per_node, rails=8)


def test_context_parallel_divides_activations_and_keeps_the_model_flops():
    one = Layout(global_batch=8, dp=8, recompute="selective")
    four = Layout(global_batch=8, dp=2, cp=4, recompute="selective")
    assert four.gpus == one.gpus == 8
    m1, m4 = memory_per_gpu(SHAPE, one), memory_per_gpu(SHAPE, four)
    assert m4["activations"] == pytest.approx(m1["activations"] / 4)
    assert m4["weights"] == m1["weights"]
    p1, p4 = predict_run(SHAPE, one, cluster()), predict_run(SHAPE, four, cluster())
    assert p4.mfu * p4.step_s == pytest.approx(p1.mfu * p1.step_s)  # the same model FLOPs per step


def test_ring_attention_hides_behind_attention_until_the_network_is_slow():
    lay = Layout(global_batch=8, dp=2, cp=4, recompute="selective")
    fast = predict_run(SHAPE, lay, cluster())  # the ring inside a node (NVLink)
    slow = predict_run(SHAPE, lay, cluster(Network(5e-6, 1 / 1e9), ranks_per_node=1))  # every hop 1 GB/s
    assert fast.terms_s["cp_comm_exposed_s"] == 0.0
    assert slow.terms_s["cp_comm_exposed_s"] > 0.0 and slow.step_s > fast.step_s


def test_expert_parallelism_divides_expert_memory_and_pays_four_all_to_alls_per_layer():
    dense_ep = predict_run(MOE, Layout(global_batch=64, dp=8, ep=1), cluster())
    ep8 = predict_run(MOE, Layout(global_batch=64, dp=8, ep=8), cluster())
    assert ep8.memory_bytes["weights"] < dense_ep.memory_bytes["weights"] / 3
    assert dense_ep.terms_s["ep_all_to_all_s"] == 0.0
    rows = 1 * 2048 * 2  # micro-batch 1, top-2
    one = all_to_all_pairwise(rows * 1024 * 2, 8).time_s(Network(2e-6, 1 / 450e9))  # 8 GPUs: one node, NVLink
    assert ep8.terms_s["ep_all_to_all_s"] == pytest.approx(8 * 8 * 4 * one)  # micro-batches x layers x 4


def test_bad_expert_and_context_layouts_name_the_fix():
    assert any("--seq-len that is a multiple of 8" in p for p in Layout(global_batch=8, cp=4).problems(
        ModelShape(n_layer=2, n_embd=64, n_head=2, seq_len=100, vocab_size=256)))
    assert any("--ep 3 must divide" in p for p in Layout(global_batch=8, dp=6, ep=3).problems(MOE))
