"""python -m parallel_lm.train end to end: resume exactness, torch DDP, generate, failure behaviour."""
import json

import pytest
import torch

from conftest import describe, mpirun, noise_tolerance

FAST = ["-m", "parallel_lm.train", "--data", "synthetic", "--global-batch-size", "8", "--eval-every", "0",
        "--eval-batches", "1", "--quiet"]


def train(k, *args, timeout=120, env=None):
    proc = mpirun(k, FAST + [str(a) for a in args], timeout=timeout, env=env)
    return proc


def load(path):
    return torch.load(path / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = train(2, "--steps", 6, "--out", out, "--trace")
    assert proc.returncode == 0, describe(proc)
    return out


def test_outputs_follow_the_contract(uninterrupted):
    ckpt = load(uninterrupted)  # weights_only=True
    from parallel_lm.model import GPT, PRESETS
    assert set(ckpt["model"]) == set(GPT(PRESETS["tiny"]).state_dict())
    assert ckpt["step"] == 6 and {"optimizer", "config", "torch_rng"} <= set(ckpt)
    lines = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 7))
    for key in ("step", "loss", "lr", "tokens", "step_s", "compute_s", "comm_s", "exposed_comm_s", "tokens_per_s"):
        assert key in lines[0]
    assert "val_loss" in lines[-1]
    assert all(0 <= r["exposed_comm_s"] <= r["comm_s"] for r in lines), lines  # exposed is a part of the whole
    trace = json.loads((uninterrupted / "trace.json").read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    names = {e["name"] for e in spans}
    assert "optimizer" in names and any(n.startswith("allreduce bucket") for n in names)
    assert {"forward 0", "backward 0"} <= names  # spans name their micro-batch


@pytest.mark.runs(2, half=FAST + ["--steps", "3", "--out", "{out}"], rest=FAST + ["--resume", "{out}", "--steps", "6"])
def test_resume_continues_exactly_on_the_same_rank_count(uninterrupted, runs):
    assert runs["half"].returncode == 0, describe(runs["half"])
    proc = runs["rest"]
    assert proc.returncode == 0 and "resumed from" in proc.stdout, describe(proc)
    tmp_path = proc.out
    full, resumed = load(uninterrupted), load(tmp_path)
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert losses(tmp_path) == losses(uninterrupted)


def test_resume_on_another_rank_count_matches_within_fp32_tolerance(uninterrupted, tmp_path):
    proc = train(4, "--steps", 3, "--out", tmp_path)  # "saved at 4 ranks, then a node was lost"
    assert proc.returncode == 0, describe(proc)
    proc = train(1, "--resume", tmp_path, "--steps", 6)
    assert proc.returncode == 0, describe(proc)
    full, resumed = load(uninterrupted), load(tmp_path)
    worst = max(float((full["model"][n] - resumed["model"][n]).abs().max()) for n in full["model"])
    assert worst <= noise_tolerance(FAST[2:] + ["--steps", "6"])


@pytest.mark.runs(2, ddp=FAST + ["--steps", "6", "--engine", "torch-ddp", "--out", "{out}"])
def test_torch_ddp_engine_follows_the_same_loss_curve(uninterrupted, runs):
    proc = runs["ddp"]
    assert proc.returncode == 0, describe(proc)
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert losses(proc.out) == pytest.approx(losses(uninterrupted), abs=1e-4)


def test_generate_samples_text(uninterrupted):
    proc = mpirun(1, ["-m", "parallel_lm.generate", "--ckpt", str(uninterrupted), "--prompt", "abc",
                      "--max-new-tokens", "20"])
    assert proc.returncode == 0 and proc.stdout.startswith("abc") and len(proc.stdout.rstrip("\n")) > 3, describe(proc)


@pytest.mark.parametrize("k,args,message", [
    (3, ["--global-batch-size", "2"], "--global-batch-size 2 is smaller than the 3 data-parallel ranks"),
    (2, ["--micro-batch-size", "3"], "is not divisible by 2 data-parallel ranks x micro-batch 3"),
    (2, ["--allreduce", "rnig"], "unknown --allreduce 'rnig'; valid: naive, tree, ring"),
    (2, ["--precision", "fp8"], "'fp8' is not one of 'fp32', 'bf16', 'fp16'"),
    (2, ["--data", "/no/such/corpus"], "--data /no/such/corpus: no such file or folder"),
    (2, ["--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
    (2, ["--out", "/proc/parallel_lm_cannot_be_here"], "cannot create --out /proc/parallel_lm_cannot_be_here"),
    (2, ["--straggler", "1:x"], "--straggler '1:x': write RANK:FACTOR"),
])
def test_bad_flags_stop_every_rank_with_one_message(k, args, message):
    proc = mpirun(k, FAST[:-1] + ["--steps", "2"] + args + ["--quiet"], timeout=60)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count(message) == 1, describe(proc)


def test_resume_with_another_model_shape_is_refused(uninterrupted):
    proc = train(1, "--resume", uninterrupted, "--n-layer", "3", "--steps", "7")
    assert proc.returncode == 2 and "--n-layer 3 does not match the checkpoint's 2" in proc.stderr, describe(proc)


def test_a_rank_raising_mid_training_ends_the_job(tmp_path):
    proc = train(3, "--steps", "50", "--global-batch-size", "6", env={"PARALLEL_LM_FAIL_AT": "1:2"}, timeout=60)
    assert proc.returncode != 0, describe(proc)
    assert "[rank 1] fatal error, aborting all ranks" in proc.stderr and "failing on purpose" in proc.stderr, describe(proc)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_says_what_to_do():
    proc = mpirun(2, FAST + ["--steps", "2", "--device", "cuda"], timeout=60)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count("--device cuda but torch sees no CUDA device") == 1, describe(proc)


# 30x: the wait dwarfs a loaded machine's noise
@pytest.mark.runs(2, fast=FAST + ["--steps", "3", "--out", "{out}/fast"],
                  slow=FAST + ["--steps", "3", "--out", "{out}/slow", "--straggler", "1:30"])
def test_straggler_slows_one_rank_without_changing_the_result(runs):
    assert all(r.returncode == 0 for r in runs.values()), [describe(r) for r in runs.values()]
    slow, fast = runs["slow"].out / "slow", runs["fast"].out / "fast"
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows(slow)] == [r["loss"] for r in rows(fast)]
    # rank 0 waits for the straggler inside the all-reduce: its exposed communication grows
    assert sum(r["exposed_comm_s"] for r in rows(slow)) > sum(r["exposed_comm_s"] for r in rows(fast))
