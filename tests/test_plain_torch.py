"""The one-process reference that every K-rank test compares with is itself held to a plain torch loop.

A nanoGPT-style loop (the GPT, torch's AdamW with betas 0.9/0.95 or SGD, decay on matrices only, linear
warm-up, torch's own clip_grad_norm_) on the same data must give what ``python -m parallel_lm.train`` gives on
one rank: bitwise without clipping (the same tensors, the same order of operations). With clipping, ours sums
the squares in fp64 and torch in fp32, so the clip coefficients differ in their last bits; under SGD that
stays a relative 1e-7 of each update on any CPU (AdamW would amplify it by a CPU-dependent amount).
"""
import pytest
import torch

from conftest import describe, mpirun
from parallel_lm.services import checkpoint
from parallel_lm.training.data import Batches, load_corpus
from parallel_lm.model import GPT, PRESETS

STEPS, BATCH, LR, WARMUP, DECAY, SEED = 5, 8, 3e-3, 2, 0.1, 1337


def plain_torch(optimizer: str, clip: float) -> dict:
    torch.manual_seed(SEED)
    model = GPT(PRESETS["tiny"])
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), foreach=False) if optimizer == "adamw" \
        else torch.optim.SGD(groups, lr=LR, foreach=False)
    batches = Batches.from_bytes(load_corpus("synthetic"), PRESETS["tiny"].block_size, SEED)
    for step in range(STEPS):
        x, y = batches.rows(step, "train", BATCH, 0, BATCH)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        for group in optimizer.param_groups:
            group["lr"] = LR * (step + 1) / WARMUP if step < WARMUP else LR
        optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("optimizer,clip", [("adamw", 0.0), ("sgd", 0.0), ("sgd", 1.0)])
def test_one_rank_training_is_a_plain_torch_loop(tmp_path, optimizer, clip):
    proc = mpirun(1, ["-m", "parallel_lm.train", "--data", "synthetic", "--steps", str(STEPS), "--global-batch-size",
                      str(BATCH), "--lr", str(LR), "--warmup-steps", str(WARMUP), "--weight-decay", str(DECAY),
                      "--seed", str(SEED), "--grad-clip", str(clip), "--optimizer", optimizer, "--eval-every", "0",
                      "--quiet", "--out", str(tmp_path)])
    assert proc.returncode == 0, describe(proc)
    ours, theirs = checkpoint.load(tmp_path)["model"], plain_torch(optimizer, clip)
    assert ours.keys() == theirs.keys()
    torch.manual_seed(SEED)
    initial = GPT(PRESETS["tiny"]).state_dict()
    moved = max(float((theirs[k] - initial[k]).abs().max()) for k in theirs)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
    if clip:
        assert 0 < moved and worst < 1e-6 * moved, (worst, moved)  # the norm is ~2.6: every step clips
    else:
        assert worst == 0.0, worst
