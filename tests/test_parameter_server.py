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


@pytest.mark.runs(3, run=FAST[:4] + ["--steps", "4", "--sync", "ps", "--staleness", "inf", "--straggler", "2:2",
                                             "--global-batch-size", "4", "--out", "{out}"])
def test_cli_sync_ps_writes_the_same_outputs(runs):
    import json

    import torch
    run = runs["run"]
    assert run.returncode == 0, describe(run)
    assert "gradient shards pushed 8, applied 8" in run.stdout, describe(run)
    ckpt = torch.load(run.out / "checkpoint.pt", weights_only=True)
    from parallel_lm.model import GPT, PRESETS
    assert set(ckpt["model"]) == set(GPT(PRESETS["tiny"]).state_dict())
    rows = [json.loads(x) for x in (run.out / "metrics.jsonl").read_text().splitlines()]
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


@pytest.mark.runs(3, full=PS + ["--steps", "4", "--out", "{out}/full", "--trace"],
                        half=PS + ["--steps", "2", "--out", "{out}/half"],
                        resumed=PS + ["--steps", "4", "--resume", "{out}/half"])
def test_a_synchronous_parameter_server_resumes_bitwise_and_writes_a_trace(runs):
    import json

    import torch
    assert all(r.returncode == 0 for r in runs.values()), [describe(r) for r in runs.values()]
    assert "resumed from" in runs["resumed"].stdout, describe(runs["resumed"])
    full, half = runs["full"].out / "full", runs["half"].out / "half"
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


@pytest.mark.runs(3, ps=PS + SGD + ["--steps", "3", "--precision", "fp16", "--out", "{out}/ps"])
@pytest.mark.runs(2, dp=BASE + SGD + ["--global-batch-size", "8", "--steps", "3", "--precision", "fp16",
                                              "--out", "{out}/dp"])
def test_parameter_server_fp16_matches_data_parallel_fp16(runs):
    """Each worker scales its own loss (a power of two: unscaling is exact), so the sum matches all-reduce's.

    SGD: the point is the sum; AdamW would amplify fp32 rounding by a CPU-dependent amount (programs/noise.py)."""
    import torch
    assert all(r.returncode == 0 for r in runs.values()), [describe(r) for r in runs.values()]
    a, b = (torch.load(runs[d].out / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ps", "dp"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOL


def _budget_run(staleness, servers):
    args = BASE + ["--global-batch-size", "6", "--steps", "500", "--sync", "ps", "--servers", str(servers),
                       "--staleness", staleness, "--ps-updates", "9", "--straggler", f"{servers + 2}:3"]
    return pytest.param(staleness, servers, marks=pytest.mark.runs(3 + servers, run=args))


@pytest.mark.parametrize("staleness,servers", [_budget_run("inf", 1), _budget_run("2", 2), _budget_run("0", 1)])
def test_an_update_budget_ends_the_job_after_n_updates(staleness, servers, runs):
    proc = runs["run"]
    assert proc.returncode == 0, describe(proc)
    applied = int(proc.stdout.split("applied ")[1].split(",")[0])
    assert applied == 9 * servers * (3 if staleness == "0" else 1), describe(proc)  # sync: 9 steps of 3 pushes


@pytest.mark.runs(4, ps=PS + SGD + ["--steps", "3", "--eval-every", "1", "--global-batch-size", "10", "--out", "{out}/ps"])
@pytest.mark.runs(1, one=BASE + SGD + ["--global-batch-size", "10", "--steps", "3", "--eval-every", "1", "--out", "{out}/one"])
def test_a_synchronous_parameter_server_splits_an_uneven_batch_like_one_process(runs):
    """10 sequences over 3 workers (4, 3, 3): each worker's loss weighted by its rows, the server's mean exact;
    and the loop evaluates the servers' parameters at every --eval-every step, as it does one process's."""
    import json

    import torch
    ps, one = runs["ps"], runs["one"]
    assert ps.returncode == 0 and "(or 4, each worker's loss weighted by its rows)" in ps.stdout, describe(ps)
    assert one.returncode == 0, describe(one)
    a, b = (torch.load(runs[d].out / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ps", "one"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOL
    rows = {d: [json.loads(x) for x in (runs[d].out / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("ps", "one")}
    assert [r["step"] for r in rows["ps"]] == [r["step"] for r in rows["one"]] == [1, 2, 3]
    for p, o in zip(rows["ps"], rows["one"]):
        assert p["val_loss"] is not None and abs(p["val_loss"] - o["val_loss"]) < 1e-5, (p, o)
