"""Parameter server: sync equals data parallel; async applies every gradient once, within its bound, no deadlock."""
import pytest

from conftest import PROGRAMS, describe, mpirun


@pytest.mark.parametrize("k,servers", [(3, 1), (5, 1), (5, 2)])
def test_parameter_server(k, servers):
    proc = mpirun(k, [str(PROGRAMS / "ps_check.py"), str(servers)], timeout=180)
    assert proc.returncode == 0, describe(proc)
    assert "PS CHECK ok" in proc.stdout, describe(proc)


FAST = ["-m", "parallel_lm.train", "--data", "synthetic", "--steps", "2", "--quiet", "--sync", "ps"]


@pytest.mark.parametrize("k,args,message", [
    (3, ["--servers", "3"], "--servers 3 on 3 ranks leaves no worker: use 1..2 servers"),
    (3, ["--staleness", "-1"], "-1 must be >= 0 (or inf)"),
    (3, ["--staleness", "soon"], "'soon': give a whole number of steps >= 0, or inf"),
    (3, ["--straggler", "7:2"], "--straggler '7:2': write RANK:FACTOR with 0 <= RANK < 3"),
    (3, ["--global-batch-size", "5"], "--global-batch-size 5 is not divisible by 2 data-parallel ranks"),
])
def test_bad_parameter_server_flags(k, args, message):
    proc = mpirun(k, FAST + args, timeout=60)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count(message) == 1, describe(proc)


def test_cli_sync_ps_writes_the_same_outputs(tmp_path):
    import json

    import torch
    proc = mpirun(3, FAST[:4] + ["--steps", "4", "--sync", "ps", "--staleness", "inf", "--straggler", "2:2",
                                 "--global-batch-size", "4", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert "gradient shards pushed 8, applied 8" in proc.stdout, describe(proc)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    from parallel_lm.model import GPT, PRESETS
    assert set(ckpt["model"]) == set(GPT(PRESETS["tiny"]).state_dict())
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "tokens_per_s", "step_s", "comm_s", "staleness", "server_busy_s"} <= set(rows[0])


@pytest.mark.parametrize("staleness", ["0", "inf"])
def test_a_crashing_worker_ends_the_job(staleness):
    proc = mpirun(4, FAST[:4] + ["--steps", "50", "--sync", "ps", "--staleness", staleness, "--global-batch-size", "6"],
                  env={"PARALLEL_LM_FAIL_AT": "2:3"}, timeout=60)
    assert proc.returncode != 0, describe(proc)
    assert "[rank 2] fatal error, aborting all ranks" in proc.stderr and "failing on purpose" in proc.stderr, describe(proc)
