"""The llama block (--arch llama): its parts, its count in the cost model, and the command line.
Equal to one process under every layout: test_layouts.py; resumed across layouts: test_resume.py."""
import pytest
import torch
import torch.nn.functional as F

from conftest import describe, mpirun
from parallel_lm.model import GPT, GPTConfig
from parallel_lm.model.llama import Rotary, rms_norm, swiglu
from parallel_lm.parallel.context_parallel import balanced_positions
from parallel_lm.parallel.tensor_parallel_sharding import join, piece
from parallel_lm.training.utilization import shape_of

LLAMA = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, arch="llama")


@pytest.mark.parametrize("arch", ["gpt", "llama", "gqa"])
def test_parameters_are_what_the_cost_model_counts(arch):
    cfg = GPTConfig(**{**LLAMA.to_dict(), "arch": "gpt"}) if arch == "gpt" else \
        GPTConfig(**{**LLAMA.to_dict(), "n_kv_head": 2 if arch == "gqa" else None})
    model = GPT(cfg)
    assert model.num_params() == shape_of(cfg).params()
    assert (model.head.weight is model.tok_emb.weight) == (arch == "gpt")
    assert (model.pos_emb is None) == (arch != "gpt")


@pytest.mark.parametrize("arch,kv", [("gpt", None), ("llama", None), ("llama", 1)])
def test_a_block_keeps_for_backward_what_the_cost_model_counts(arch, kv):
    """Every tensor autograd saves in one block's forward (by storage, once each) against the cost model's
    activation bytes: the fused SwiGLU and RMSNorm and the rotation before the core's layout keep the llama
    block as lean as the formula."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, arch=arch, n_kv_head=kv)
    block, x = GPT(cfg).blocks[0], torch.randn(8, 64, 64, requires_grad=True)
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    weights = sum(p.numel() * 4 for p in block.parameters())  # Linear saves its weight too (not an activation)
    formula = shape_of(cfg).layer_activation_bytes(8, bytes_per_value=4)
    assert abs((sum(kept.values()) - weights) / formula - 1) < 0.02, (sum(kept.values()) - weights, formula)


def test_rotary_scores_depend_on_the_distance_only():
    torch.manual_seed(0)
    d, T = 8, 12
    rotary = Rotary(d)
    q, k = torch.randn(1, 1, 1, d, dtype=torch.float64), torch.randn(1, 1, 1, d, dtype=torch.float64)
    qs, ks = rotary(q.expand(1, T, 1, d), k.expand(1, T, 1, d))  # the same vectors at every position
    scores = (qs[0, :, 0] @ ks[0, :, 0].T)  # (T, T): query at m, key at n
    for shift in range(1, 4):
        assert torch.allclose(scores[shift:, shift:], scores[:-shift, :-shift])
    assert not torch.allclose(scores[0, 1], scores[0, 2])  # but the distance matters


@pytest.mark.parametrize("cp,rank", [(2, 0), (2, 1), (4, 3)])
def test_a_context_rank_turns_its_tokens_as_the_whole_sequence_does(cp, rank):
    torch.manual_seed(1)
    T, d = 16, 8
    q, k = torch.randn(2, T, 3, d), torch.randn(2, T, 3, d)
    whole = Rotary(d)(q, k)
    mine = balanced_positions(T, cp, rank)
    local = Rotary(d, mine)(q[:, mine], k[:, mine])
    for a, b in zip(local, whole):
        assert torch.equal(a, b[:, mine])


def test_fused_swiglu_and_rmsnorm_match_torch_and_their_gradients():
    torch.manual_seed(2)
    x, w = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True), torch.randn(8, dtype=torch.float64)
    w.requires_grad_()
    assert torch.allclose(rms_norm(x, w), F.rms_norm(x, (8,), w, 1e-5))
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w), (x, w))
    gate_up = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(swiglu(gate_up), F.silu(gate) * up)
    assert torch.autograd.gradcheck(swiglu, (gate_up,))


@pytest.mark.parametrize("tp", [2, 4])
def test_gate_and_up_are_cut_section_by_section(tp):
    full = GPT(LLAMA).state_dict()["blocks.0.mlp.gate_up.weight"]  # (2F, C): gate's F rows, then up's
    f = LLAMA.ffn_hidden
    pieces = [piece("blocks.0.mlp.gate_up.weight", full, r, tp) for r in range(tp)]
    for r, p in enumerate(pieces):  # rank r: its slice of gate, then the same slice of up
        rows = slice(r * f // tp, (r + 1) * f // tp)
        assert torch.equal(p, torch.cat([full[:f][rows], full[f:][rows]]))
    assert torch.equal(join("blocks.0.mlp.gate_up.weight", pieces), full)


def test_bad_llama_shapes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="must be even"):
        GPTConfig(n_embd=12, n_head=4, arch="llama")  # head size 3: no channel pairs
    with pytest.raises(ValueError, match="--arch 'mamba' is not one of gpt, llama"):
        GPTConfig(arch="mamba")
    with pytest.raises(ValueError, match="--n-kv-head 3 must divide --n-head 4"):
        GPTConfig(n_embd=32, n_head=4, n_kv_head=3, arch="llama")
    with pytest.raises(ValueError, match="with --arch llama"):
        GPTConfig(n_embd=32, n_head=4, n_kv_head=2)


@pytest.mark.runs(2, train=["-m", "parallel_lm.train", "--arch", "llama", "--tp", "2", "--steps", "3", "--data",
                            "synthetic", "--eval-every", "0", "--quiet", "--out", "{out}"])
def test_train_arch_llama_checkpoints_and_generates(runs):
    proc = runs["train"]
    assert proc.returncode == 0, describe(proc)
    assert "arch='llama'" in proc.stdout
    ckpt = torch.load(proc.out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["model"]["arch"] == "llama"
    want = GPT(GPTConfig(**ckpt["config"]["model"])).state_dict()
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in want.items()}
    assert "pos_emb.weight" not in ckpt["model"] and "head.weight" in ckpt["model"]
    gen = mpirun(1, ["-m", "parallel_lm.generate", "--ckpt", str(proc.out), "--prompt", "def ",
                     "--max-new-tokens", "8"], timeout=60)
    assert gen.returncode == 0 and gen.stdout.startswith("def "), describe(gen)


def test_the_cost_model_knows_every_architecture_the_model_has():
    from parallel_lm.costmodel.transformer import ARCH_SHAPES
    from parallel_lm.model.config import ARCHS
    assert tuple(ARCH_SHAPES) == ARCHS
