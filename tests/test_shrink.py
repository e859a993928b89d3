"""--on-failure shrink: under Open MPI with ULFM the survivors of a dead rank go on, and end where one process ends.

Each case kills ranks on purpose (parallel_lm/faults.py) and compares the parameters after 8 steps with one
process that trained the same global batch uninterrupted. Elsewhere (MPICH) the flag is refused, naming the fix.

The point is the protocol (no step lost, the survivors' rows summed), so the runs use SGD: its parameters differ
from one process's by lr x a few fp32 roundings of the gradient (7e-9 measured for 5 -> 4 -> 3 ranks), whatever the
CPU, while one lost step moves them by 3.4e-4. AdamW would amplify the rounding of near-zero gradients by a CPU-
dependent amount (5e-6 on one machine, 4.5e-5 on an AVX-512 one); tests/programs/noise.py measures that instead.
"""
import json

import pytest

from conftest import describe, mpirun, open_mpi
from parallel_lm.services import checkpoint

TRAIN = ["--steps", "8", "--data", "synthetic", "--global-batch-size", "12", "--eval-every", "0", "--quiet",
         "--optimizer", "sgd"]
TOL = 1e-6  # SGD: 100x the fp32 noise measured, 1/300 of one step
ULFM = ("--with-ft", "ulfm")
needs_ulfm = pytest.mark.skipif(not open_mpi(), reason="ULFM: run under Open MPI (make test-openmpi)")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    proc = mpirun(1, ["-m", "parallel_lm.train", *TRAIN, "--out", str(out)])
    assert proc.returncode == 0, describe(proc)
    return checkpoint.load(out)["model"]


def shrink(tmp_path, ranks, fail, *flags, timeout=120):
    out = tmp_path / "run"
    proc = mpirun(ranks, ["-m", "parallel_lm.train", *TRAIN, "--out", str(out), "--on-failure", "shrink", *flags],
                  env={"PARALLEL_LM_FAIL_AT": fail}, launcher=ULFM, timeout=timeout)
    log = [json.loads(line) for line in (out / "recovery.jsonl").read_text().splitlines()] \
        if (out / "recovery.jsonl").exists() else []
    return proc, out, log


def max_difference(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@needs_ulfm
@pytest.mark.parametrize("ranks,fail,flags,dead", [
    (5, "0:2:kill,3:5:killcomm", [], [[0], [3]]),  # rank 0 (the writer); then one inside the all-reduce: 5, 4, 3 ranks
    (4, "0:3:killwrite", ["--ckpt-every", "2"], [[0]]),  # rank 0 killed writing step 4's checkpoint
    (4, "2:3:stop", ["--timeout", "4"], [[2]]),  # stopped: the watchdog kills it
])
def test_survivors_of_plain_data_parallelism_lose_no_step_and_end_like_one_process(tmp_path, one_process, ranks,
                                                                                   fail, flags, dead):
    proc, out, log = shrink(tmp_path, ranks, fail, *flags)
    assert proc.returncode == 0, describe(proc)
    assert [entry["dead"] for entry in log] == dead, describe(proc)
    assert all(entry["steps_lost"] == 0 and entry["recovery_s"] < 10 for entry in log)
    assert proc.stdout.count("[shrink]") == len(dead) and "no completed step lost" in proc.stdout
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    state = checkpoint.load(out)
    assert state["step"] == 8 and max_difference(one_process, state["model"]) < TOL


@needs_ulfm
def test_a_layout_that_lost_a_slice_goes_on_from_the_checkpoint_and_says_so(tmp_path, one_process):
    """dp 3 x tp 2 loses two ranks at once: dp 2 x tp 2 from the checkpoint at step 4 (ZeRO takes the same path)."""
    proc, out, log = shrink(tmp_path, 6, "1:4:kill,4:4:kill", "--ckpt-every", "2", "--tp", "2")
    assert proc.returncode == 0, describe(proc)
    assert "from the checkpoint at step 4: the dead rank's tensor/pipeline slice is lost" in proc.stdout, describe(proc)
    assert len(log) == 1 and log[0]["restart_step"] == 4 and len(log[0]["ranks_after"]) == 4
    assert max_difference(one_process, checkpoint.load(out)["model"]) < TOL


def test_which_layouts_go_on_in_place_and_what_survivors_can_hold():
    from parallel_lm.config import TrainConfig
    from parallel_lm.services.shrink import fit, in_place
    assert in_place(TrainConfig()) and not in_place(TrainConfig(zero=1)) and not in_place(TrainConfig(tp=2))
    assert fit(TrainConfig(tp=2, dp=3, global_batch_size=12), 4).dp == 2
    with pytest.raises(ValueError, match=r"3 survivor\(s\) cannot hold the tp 2 x pp 1 layout"):
        fit(TrainConfig(tp=2), 3)


@needs_ulfm
def test_survivors_that_cannot_hold_the_layout_stop_and_say_what_to_run(tmp_path):
    proc, _, _ = shrink(tmp_path, 4, "1:4:kill", "--ckpt-every", "2", "--tp", "2")
    assert proc.returncode != 0
    assert "3 survivor(s) cannot hold the tp 2 x pp 1 layout" in proc.stderr + proc.stdout, describe(proc)
    assert "parallel_lm.elastic" in proc.stderr + proc.stdout


@needs_ulfm
@pytest.mark.parametrize("ranks,fail,flags,how,lost", [
    # 1 server + 5 workers (12 sequences: 3, 3, 2, 2, 2), worker 3 dies: the server drops it, no step lost
    (6, "3:3:kill", [], "the dead worker dropped", 0),
    # 2 servers + 3 workers, server 1 dies in step 5: its shard comes back from the checkpoint at step 4
    (5, "1:4:kill", ["--servers", "2", "--ckpt-every", "2"], "from the checkpoint at step 4: a server's shard", 0),
])
def test_a_synchronous_parameter_server_drops_a_dead_worker_and_recovers_a_dead_servers_shard(
        tmp_path, one_process, ranks, fail, flags, how, lost):
    proc, out, log = shrink(tmp_path, ranks, fail, "--sync", "ps", *flags)
    assert proc.returncode == 0, describe(proc)
    assert how in proc.stdout and len(log) == 1 and log[0]["steps_lost"] == lost, describe(proc)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    assert max_difference(one_process, checkpoint.load(out)["model"]) < TOL


@needs_ulfm
def test_torch_ddp_is_refused_before_any_work(tmp_path):
    """gloo's process group runs over its own TCP connections, which ULFM cannot revoke or shrink."""
    proc, _, _ = shrink(tmp_path, 2, "", "--engine", "torch-ddp")
    assert proc.returncode == 2 and proc.stderr.count("use it with --engine explicit") == 1, describe(proc)


def test_without_ulfm_shrink_is_refused_on_every_rank_naming_the_fix(tmp_path):
    proc = mpirun(2, ["-m", "parallel_lm.train", *TRAIN, "--on-failure", "shrink"])
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count("needs MPI with User-Level Failure Mitigation") == 1, describe(proc)
    assert "mpirun --with-ft ulfm" in proc.stderr and "parallel_lm.elastic" in proc.stderr
