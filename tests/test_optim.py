"""parallel/optim.py: the decay rule, the optimizer and the global-norm clip every layout shares."""
import pytest
import torch
from mpi4py import MPI

from parallel_lm.model import GPT, PRESETS
from parallel_lm.parallel.optim import BETAS, build_optimizer, clip_coefficient, decay_groups, decay_mask


def test_matrices_and_embeddings_decay_biases_and_gains_do_not():
    model = GPT(PRESETS["tiny"])
    decayed, rest = decay_groups(model.parameters(), 0.1)
    assert decayed["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in rest["params"])
    assert len(decayed["params"]) + len(rest["params"]) == len(list(model.parameters()))
    mask = decay_mask(list(model.parameters()))
    assert mask.dtype == torch.bool and int(mask.sum()) == sum(p.numel() for p in decayed["params"])
    assert len(mask) == model.num_params()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_the_optimizers_give_torchs_updates_and_state_bitwise(kind):
    """Ours write torch's AdamW (betas 0.9, 0.95) and SGD out; the same steps, with a decayed and an undecayed
    group, a changing learning rate and a parameter without a gradient, must give the same bits."""
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(11)),
                   torch.nn.Parameter(torch.randn(3, 2))]
    theirs_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = build_optimizer(decay_groups(ours_params, 0.1), kind, 1e-2)
    groups = decay_groups(theirs_params, 0.1)
    theirs = torch.optim.AdamW(groups, lr=1e-2, betas=BETAS, foreach=False) if kind == "adamw" \
        else torch.optim.SGD(groups, lr=1e-2, foreach=False)
    for step in range(6):
        grads = [torch.randn_like(p) for p in ours_params[:2]]  # the third never has a gradient
        for params in (ours_params, theirs_params):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for opt in (ours, theirs):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (step + 1) / 6
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(ours_params, theirs_params)), step
    for a, b in zip(ours_params, theirs_params):
        mine, torchs = ours.state.get(a, {}), dict(theirs.state.get(b, {}))
        assert mine.keys() == torchs.keys() and all(torch.equal(mine[k], torchs[k]) for k in mine)
        assert all(mine[k].dtype == torchs[k].dtype for k in mine)
    assert (kind == "adamw") == bool(ours.state)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_clip_coefficient_is_torchs_rule(scale):
    torch.manual_seed(0)
    grads = [torch.randn(7, 5) * scale, torch.randn(11) * scale]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    coef = clip_coefficient(sum(float((g.double() ** 2).sum()) for g in grads), 1.0)
    assert coef <= 1.0
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g * coef, rtol=1e-6, atol=0)
    # summed over a group of one: the same coefficient
    assert clip_coefficient(sum(float((g.double() ** 2).sum()) for g in grads), 1.0, (MPI.COMM_SELF,)) == coef


def test_a_checkpoint_with_torch_index_keyed_optimizer_state_loads_by_name():
    """Checkpoints from before states were saved by name hold one process's AdamW state_dict, keyed by index."""
    import torch

    from parallel_lm.services.checkpoint import optimizer_by_name
    from parallel_lm.model import GPT, GPTConfig
    from parallel_lm.parallel.optim import decay_groups
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8))
    opt = torch.optim.AdamW(decay_groups(model.parameters(), 0.1), lr=1e-3, betas=BETAS)  # what those runs used
    _, loss = model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8)))
    loss.backward()
    opt.step()
    by_name = optimizer_by_name(opt.state_dict(), model)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(by_name[name]["exp_avg"], opt.state[p]["exp_avg"]), name
