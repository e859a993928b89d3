"""python -m parallel_lm.elastic: a job that loses a rank restarts from its newest checkpoint on the survivors
and ends where the unbroken job ends."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, describe, mpiexec_path, mpirun, noise_tolerance
from parallel_lm.services import checkpoint

TRAIN = ["--steps", "8", "--ckpt-every", "2", "--data", "synthetic", "--global-batch-size", "12", "--eval-every", "0",
         "--quiet"]


def elastic(tmp_path, args, fail, timeout=240, extra=None):
    env = {"PARALLEL_LM_FAIL_AT": fail, "PARALLEL_LM_FAIL_ONCE": str(tmp_path / "failed-once"), "PYTHONUNBUFFERED": "1",
           **(extra or {})}
    return subprocess.run([sys.executable, "-m", "parallel_lm.elastic", "--mpiexec", mpiexec_path(), *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def test_a_killed_rank_restarts_the_job_on_the_survivors_which_finish_like_the_unbroken_run(tmp_path):
    unbroken, out = tmp_path / "unbroken", tmp_path / "run"
    assert mpirun(4, ["-m", "parallel_lm.train", *TRAIN, "--out", str(unbroken)], timeout=120).returncode == 0
    proc = elastic(tmp_path, ["--ranks", "4", "--min-ranks", "2", "--", *TRAIN, "--out", str(out)], "3:5:kill")
    assert proc.returncode == 0, describe(proc)
    assert "the job on 4 rank(s) ended with exit 9 after step 5; restarting on 3 rank(s) from step 4 " \
           "(1 completed step(s) lost)" in proc.stdout, describe(proc)
    assert "[elastic] recovered in" in proc.stdout and "done: 1 restart(s)" in proc.stdout
    log = [json.loads(line) for line in (out / "recovery.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["ranks_before"] == 4 and log[0]["ranks_after"] == 3 and log[0]["steps_lost"] == 1
    assert 0 < log[0]["recovery_s"] < 30
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    a, b = checkpoint.load(unbroken)["model"], checkpoint.load(out)["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= noise_tolerance(TRAIN)


def test_same_size_restarts_on_as_many_ranks(tmp_path):
    proc = elastic(tmp_path, ["--ranks", "2", "--same-size", "--", *TRAIN, "--out", str(tmp_path / "run")], "1:3")
    assert proc.returncode == 0, describe(proc)
    assert "restarting on 2 rank(s) from step 2" in proc.stdout, describe(proc)


@pytest.mark.parametrize("args,why", [(["--ranks", "2", "--min-ranks", "2"], "1 rank(s) would be fewer than --min-ranks 2"),
                                      (["--ranks", "3", "--max-restarts", "0"], "--max-restarts 0 spent")])
def test_it_gives_up_below_min_ranks_or_after_max_restarts_and_says_why(tmp_path, args, why):
    proc = elastic(tmp_path, [*args, "--", *TRAIN, "--out", str(tmp_path / "run")], "1:3:kill")
    assert proc.returncode == 1 and f"giving up: {why}" in proc.stdout, describe(proc)


def test_without_out_it_says_what_to_pass(tmp_path):
    proc = elastic(tmp_path, ["--ranks", "2", "--", "--steps", "2"], "")
    assert proc.returncode == 2 and "including --out DIR" in proc.stderr, describe(proc)


@pytest.mark.parametrize("fail", ["0:5:killwrite", "0:6:corrupt"])  # rank 0 writes: no race with the write
def test_a_kill_mid_checkpoint_or_a_corrupted_newest_checkpoint_falls_back_and_still_finishes(tmp_path, fail):
    """killwrite: rank 0 killed while writing step 6's checkpoint; corrupt: step 6's checkpoint truncated, then
    a kill. Either way the restart resumes from step 4's (--keep-checkpoints 2) and finishes."""
    out = tmp_path / "run"
    proc = elastic(tmp_path, ["--ranks", "3", "--", *TRAIN, "--keep-checkpoints", "2", "--out", str(out)], fail,
                   extra={"PARALLEL_LM_CORRUPT": str(out / "checkpoint.pt")})
    assert proc.returncode == 0 and "done: 1 restart(s)" in proc.stdout, describe(proc)
    assert checkpoint.load(out)["step"] == 8
    log = json.loads((out / "recovery.jsonl").read_text().splitlines()[0])
    assert log["restart_step"] == 4 and log["completed_step"] == 6, describe(proc)


def test_a_restart_keeps_whole_model_replicas_and_an_explicit_dp_in_step():
    from parallel_lm.elastic import _fewer, _with_dp
    assert [_fewer(r, flags) for r, flags in [(4, []), (4, ["--tp", "2"]), (8, ["--tp", "2", "--pp=2"])]] == [3, 2, 4]
    assert [_fewer(8, ["--cp", "2"]), _fewer(8, ["--ep", "4", "--n-experts", "8"]), _fewer(12, ["--cp=2", "--tp", "2"])] \
        == [6, 4, 8]
    assert _with_dp(["--dp", "3", "--cp", "2"], 4) == ["--dp", "2", "--cp", "2"]
    assert _with_dp(["--dp", "4", "--tp", "2", "--steps", "3"], 6) == ["--dp", "3", "--tp", "2", "--steps", "3"]
    assert _with_dp(["--dp=4"], 3) == ["--dp=3"] and _with_dp(["--steps", "3"], 2) == ["--steps", "3"]
