"""train --predict: the step model for this run's layout, and the end-of-run table beside measured times."""
import json

import pytest

from conftest import describe, mpirun
from parallel_lm.config import TrainConfig
from parallel_lm.costmodel.formulas import COSTS
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.model import PRESETS
from parallel_lm.training.run_prediction import ComputeProbe, measured, predict

PROFILE = load_profile("alpha=2e-5,beta=1e-9,gamma=1e-10")
PROBE = ComputeProbe(micro_batch_s=0.010, optimizer_s=0.002, micro_batch=8, threads=1)
N, FLOPS_PER_TOKEN = 1_000_000, 6e6


def step(grid_dp=1, tp=1, pp=1, zero=0, local_ranks=1, cores=2, n_micro=1, **cfg):
    from parallel_lm.parallel.grid import Grid
    config = TrainConfig(model=PRESETS["tiny"], global_batch_size=8 * grid_dp * n_micro, zero=zero, tp=tp, pp=pp, **cfg)
    grid = Grid.for_world(grid_dp * tp * pp, 0, grid_dp, tp, pp)
    return predict(config, grid, n_micro, PROBE, PROFILE, N, FLOPS_PER_TOKEN, local_ranks, cores)


def test_one_rank_is_the_probe_itself():
    pred = step()
    assert pred["compute_s"] == pytest.approx(PROBE.micro_batch_s)
    assert pred["comm_s"] == 0 and pred["optimizer_s"] == pytest.approx(PROBE.optimizer_s)
    assert pred["step_s"] == pytest.approx(PROBE.micro_batch_s + PROBE.optimizer_s)


def test_ranks_beyond_the_cores_share_them():
    alone, crowded = step(grid_dp=2, local_ranks=2, cores=2), step(grid_dp=8, local_ranks=8, cores=2)
    assert alone["sharing"] == 1 and crowded["sharing"] == 4
    assert crowded["compute_s"] == pytest.approx(4 * alone["compute_s"])
    assert crowded["optimizer_s"] == pytest.approx(4 * PROBE.optimizer_s)


def test_data_parallel_sync_is_the_formula_for_the_gradient_bytes():
    pred = step(grid_dp=4, local_ranks=4, cores=4, allreduce="recursive_doubling", overlap=False)
    want = COSTS["allreduce"]["recursive_doubling"](4 * N, 4).time_s(PROFILE.network(4 * N))
    assert pred["comm_s"] == pytest.approx(want) and pred["exposed_comm_s"] == pytest.approx(want)
    half = step(grid_dp=4, local_ranks=4, cores=4, allreduce="recursive_doubling", overlap=False, comm_dtype="fp16")
    assert half["comm_s"] < want


def test_layouts_split_compute_and_add_their_terms():
    pipe = step(grid_dp=1, pp=2, n_micro=4, local_ranks=2, cores=2)
    assert pipe["compute_s"] == pytest.approx(4 * PROBE.micro_batch_s / 2)  # 4 micro-batches, half the layers
    assert pipe["bubble_s"] == pytest.approx(pipe["compute_s"] / 4) and pipe["pp_comm_s"] > 0
    tensor = step(grid_dp=1, tp=2, local_ranks=2, cores=2)
    assert tensor["tp_comm_s"] > 0 and tensor["compute_s"] == pytest.approx(PROBE.micro_batch_s / 2)
    sharded = step(grid_dp=4, zero=1, local_ranks=4, cores=4)
    assert sharded["optimizer_s"] == pytest.approx(PROBE.optimizer_s / 4)


def test_measured_medians_leave_out_the_warm_up_steps():
    from parallel_lm.services.metrics import StepRecord
    recs = [StepRecord(step=i, loss=1.0, lr=0.1, tokens=8, step_s=s, compute_s=1.0, comm_s=None, exposed_comm_s=None,
                       tokens_per_s=8 / s) for i, s in enumerate((9.0, 8.0, 1.0, 2.0, 3.0))]
    got = measured(recs)
    assert got["step_s"] == 2.0 and got["comm_s"] is None and got["steps"] == 3


FAST = ["-m", "parallel_lm.train", "--data", "synthetic", "--global-batch-size", "8", "--eval-every", "0",
        "--eval-batches", "1", "--quiet", "--steps", "4"]


@pytest.mark.parametrize("k,layout", [(2, []), (2, ["--pp", "2", "--micro-batches", "2"])])
def test_train_prints_and_writes_the_prediction(k, layout, tmp_path):
    proc = mpirun(k, FAST + ["--predict", "alpha=2e-5,beta=1e-9,gamma=1e-10", "--out", str(tmp_path), *layout],
                  timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.count("prediction on profile") == 1, describe(proc)  # rank 0 only
    assert "step " in proc.stdout and "predicted" in proc.stdout, describe(proc)
    doc = json.loads((tmp_path / "prediction.json").read_text())
    assert doc["layout"]["ranks"] == k and doc["measured"]["steps"] == 2
    assert doc["predicted"]["step_s"] > 0 and doc["measured"]["step_s"] > 0
    assert (doc["predicted"]["pp_comm_s"] > 0) == bool(layout)


@pytest.mark.parametrize("args,message", [
    (["--predict", "no-such-profile"], "no profile 'no-such-profile'"),
    (["--predict", "alpha=1e-6"], "bad profile 'alpha=1e-6': give at least alpha= and beta="),
    (["--predict", "alpha=1e-6,beta=1e-9", "--sync", "ps"], "--predict covers --sync allreduce runs"),
])
def test_bad_predict_input_stops_every_rank(args, message):
    proc = mpirun(2, FAST + args, timeout=60)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count(message) == 1, describe(proc)
