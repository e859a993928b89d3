"""Mixture of experts and expert parallelism: routing rules, and ep ranks training as one process does."""
import math

import pytest
import torch

from conftest import PROGRAMS, assert_cases, describe, mpirun
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.model.moe import balance_loss, within_capacity


def test_capacity_queues_first_choices_before_second_and_earlier_tokens_first():
    # one sequence of 4 tokens, 2 experts, top-2: capacity ceil(1.0 x 4 x 2 / 2) = 4 per expert
    expert = torch.tensor([[[0, 1], [0, 1], [0, 1], [1, 0]]])
    assert within_capacity(expert, 2, 1.0).all()
    # capacity ceil(0.5 x 4 x 2 / 2) = 2. Expert 0 queues the first choices of tokens 0, 1, 2, then token 3's
    # second: it keeps tokens 0 and 1. Expert 1 queues token 3's first choice, then the second choices of
    # tokens 0, 1, 2: it keeps token 3 and token 0's second choice.
    keep = within_capacity(expert, 2, 0.5)[0].tolist()
    assert keep == [[True, True], [True, False], [False, False], [True, False]]
    assert within_capacity(expert, 2, 0.0).all()  # no limit


def test_balance_loss_is_one_when_the_load_is_uniform_and_grows_with_imbalance():
    E, T = 4, 8
    uniform = torch.full((1, T, E), 1 / E)
    spread = torch.arange(T).remainder(E).view(1, T, 1)
    assert float(balance_loss(uniform, spread)) == pytest.approx(1.0)
    skewed = torch.zeros(1, T, E)
    skewed[..., 0] = 1.0
    assert float(balance_loss(skewed, torch.zeros(1, T, 1, dtype=torch.long))) == pytest.approx(E)


def test_a_mixture_of_experts_model_trains_every_part_and_counts_active_flops():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, n_experts=4, top_k=2)
    model = GPT(cfg)
    x = torch.randint(0, 256, (3, 16))
    _, loss = model(x, x)
    (loss + model.balance_loss()).backward()
    assert all(p.grad is not None for p in model.parameters())
    dense = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16))
    mlp = sum(p.numel() for p in dense.blocks[0].mlp.parameters())
    router = 32 * 4
    # two of the four experts run per token: FLOPs of two dense MLPs plus the router, per layer
    assert model.flops_per_token() == dense.flops_per_token() + 6 * 2 * (mlp + router)
    assert math.isclose(sum(int(b.mlp.routed.sum()) for b in model.blocks), 2 * 2 * 3 * 16)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_expert_parallel_training_equals_one_process(k):
    from parallel_lm.comm import ALLTOALL_ALGORITHMS
    names = [f"top-{top_k} ep {ep} {algorithm} zero {zero}" for top_k in (1, 2)
             for ep, algorithm, zero in [(1, "pairwise", 0), (1, "pairwise", 1)]
             + [(ep, algorithm, 0) for ep in (2, 4) if k % ep == 0 for algorithm in ALLTOALL_ALGORITHMS]]
    assert_cases(mpirun(k, [str(PROGRAMS / "experts_equivalence.py")], timeout=400), names)


def test_train_prints_the_routing_and_generate_reads_the_experts(tmp_path):
    out = tmp_path / "run"
    proc = mpirun(2, ["-m", "parallel_lm.train", "--steps", "4", "--data", "synthetic", "--n-experts", "4",
                      "--top-k", "2", "--ep", "2", "--alltoall", "bruck", "--eval-every", "0", "--out", str(out)],
                  timeout=200)
    assert proc.returncode == 0, describe(proc)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("experts:"))
    tokens = [int(t) for t in line.split("(all 2 layers) ")[1].split(";")[0].split(", ")]
    assert sum(tokens) == 2 * 2 * 32 * 64 and "max/mean" in line and "dropped over capacity" in line
    proc = mpirun(1, ["-m", "parallel_lm.generate", "--ckpt", str(out), "--max-new-tokens", "8"], timeout=60)
    assert proc.returncode == 0, describe(proc)
