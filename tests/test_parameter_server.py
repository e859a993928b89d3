"""Parameter server: sync equals data parallel; async applies every gradient once, within its bound, no deadlock."""
import pytest

from conftest import PROGRAMS, assert_cases, describe, mpirun


@pytest.mark.parametrize("k,servers", [(3, 1), (5, 1), (5, 2)])
def test_parameter_server(k, servers):
    assert_cases(mpirun(k, [str(PROGRAMS / "ps_check.py"), str(servers)], timeout=180),
                 ["sync adamw", "sync sgd", "staleness 2", "staleness None"])


FAST = ["-m", "parallel_lm.train", "--data", "synthetic", "--steps", "2", "--quiet", "--sync", "ps"]


@pytest.mark.parametrize("k,args,message", [
    (3, ["--servers", "3"], "--servers 3 on 3 ranks leaves no worker: use 1..2 servers"),
    (3, ["--staleness", "-1"], "-1 must be >= 0 (or inf)"),
    (3, ["--staleness", "soon"], "'soon': give a whole number of steps >= 0, or inf"),
    (3, ["--straggler", "7:2"], "--straggler '7:2': write RANK:FACTOR with 0 <= RANK < 3"),
    (3, ["--staleness", "inf", "--global-batch-size", "5"],
     "--global-batch-size 5 is not divisible by the 2 parameter-server workers, and an asynchronous server"),
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


BASE = FAST[:4] + ["--quiet", "--eval-every", "0", "--eval-batches", "1"]
PS = BASE + ["--global-batch-size", "8", "--sync", "ps"]
SGD = ["--optimizer", "sgd"]
TOL = 1e-6  # SGD: the parameters differ by lr x a few fp32 roundings of the gradient; one step moves them ~1e-4


def _losses(folder):
    import json
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_synchronous_parameter_server_resumes_bitwise_and_writes_a_trace(tmp_path):
    import json

    import torch
    full, half = tmp_path / "full", tmp_path / "half"
    for args in (["--steps", "4", "--out", full, "--trace"], ["--steps", "2", "--out", half],
                 ["--steps", "4", "--resume", half]):
        proc = mpirun(3, PS + [str(a) for a in args], timeout=120)
        assert proc.returncode == 0, describe(proc)
    assert "resumed from" in proc.stdout, describe(proc)
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (full, half))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["by_name"].keys() == b["optimizer"]["by_name"].keys()
    for name, state in a["optimizer"]["by_name"].items():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[k], b["optimizer"]["by_name"][name][k]) for k in state), name
    assert _losses(full) == _losses(half)
    spans = {(e["pid"], e["name"].split()[0]) for e in json.loads((full / "trace.json").read_text())["traceEvents"]
             if e["ph"] == "X"}
    assert {(0, "apply"), (1, "push"), (1, "pull"), (2, "forward"), (2, "backward")} <= spans


def test_parameter_server_fp16_matches_data_parallel_fp16(tmp_path):
    """Each worker scales its own loss (a power of two: unscaling is exact), so the sum matches all-reduce's.

    SGD: the point is the sum; AdamW would amplify fp32 rounding by a CPU-dependent amount (programs/noise.py)."""
    import torch
    proc = mpirun(3, PS + SGD + ["--steps", "3", "--precision", "fp16", "--out", str(tmp_path / "ps")], timeout=120)
    assert proc.returncode == 0, describe(proc)
    proc = mpirun(2, BASE + SGD + ["--global-batch-size", "8", "--steps", "3", "--precision", "fp16", "--out",
                                   str(tmp_path / "dp")], timeout=120)
    assert proc.returncode == 0, describe(proc)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ps", "dp"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOL


@pytest.mark.parametrize("staleness,servers", [("inf", 1), ("2", 2), ("0", 1)])
def test_an_update_budget_ends_the_job_after_n_updates(staleness, servers):
    proc = mpirun(3 + servers, BASE + ["--global-batch-size", "6", "--steps", "500", "--sync", "ps", "--servers",
                                       str(servers), "--staleness", staleness, "--ps-updates", "9",
                                       "--straggler", f"{servers + 2}:3"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    applied = int(proc.stdout.split("applied ")[1].split(",")[0])
    assert applied == 9 * servers * (3 if staleness == "0" else 1), describe(proc)  # sync: 9 steps of 3 pushes


def test_a_synchronous_parameter_server_splits_an_uneven_batch_like_one_process(tmp_path):
    """10 sequences over 3 workers (4, 3, 3): each worker's loss weighted by its rows, the server's mean exact."""
    import torch
    proc = mpirun(4, PS + SGD + ["--steps", "3", "--global-batch-size", "10", "--out", str(tmp_path / "ps")], timeout=120)
    assert proc.returncode == 0 and "(or 4, each worker's loss weighted by its rows)" in proc.stdout, describe(proc)
    proc = mpirun(1, BASE + SGD + ["--global-batch-size", "10", "--steps", "3", "--out", str(tmp_path / "one")],
                  timeout=120)
    assert proc.returncode == 0, describe(proc)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ps", "one"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOL
