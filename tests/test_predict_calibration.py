"""predict --calibrate-to: the stack's compute and network factors fitted from measured steps (costmodel/stack.py)."""
import subprocess
import sys

import pytest

from conftest import ROOT, describe

from parallel_lm.costmodel.devices import load_device
from parallel_lm.costmodel.layout import Cluster, Layout
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.costmodel.stack import StackFactors, apply, fit, parse_measurements
from parallel_lm.costmodel.step import predict_run
from parallel_lm.costmodel.transformer import ModelShape

SHAPE = ModelShape(24, 2048, 16, 2048, 51200)  # 1.3B, data parallel over 100 Gb/s Ethernet: the sync matters
CLUSTER = Cluster.from_profile(load_device("a100-80gb"), load_profile("eth-100g"))


def step_s(gpus: int, factors: StackFactors) -> float:
    return predict_run(SHAPE, Layout(global_batch=512, micro_batch=4, dp=gpus, precision="bf16"),
                       apply(CLUSTER, factors)).step_s


@pytest.mark.parametrize("counts", [(8, 128), (8, 64, 128)])
def test_two_or_more_measurements_recover_both_factors(counts):
    stack = StackFactors(compute=1.3, network=2.0)  # a slower stack: 30% in its kernels, twice in its messages
    measured = [(step_s(g, stack), g) for g in counts]
    got = fit(step_s, measured)
    assert got.compute == pytest.approx(1.3, rel=1e-3) and got.network == pytest.approx(2.0, rel=1e-3), got


def test_one_measurement_fits_compute_alone_and_meets_it():
    measured = [(1.25 * step_s(64, StackFactors()), 64)]
    got = fit(step_s, measured)
    assert got.network == 1.0 and 1.25 < got.compute < 1.5  # more than 1.25: the exposed sync does not scale
    assert step_s(64, got) == pytest.approx(measured[0][0], rel=1e-6)


@pytest.mark.parametrize("text,message", [
    ("60.1", "give STEP_S@GPUS"), ("60.1@0", "must be > 0"), ("1@8,2@8", "one measurement per GPU count"),
])
def test_bad_measurements_name_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_measurements(text)


# Narayanan et al. 2021 (arXiv 2104.04473), Table 2: the 530B model with PTD-P on 560 / 1120 / 2240 A100s at
# 171 / 167 / 159 TFLOP/s per GPU
PTD_P_530B = ["--n-layer", "105", "--n-embd", "20480", "--n-head", "128", "--seq-len", "2048", "--vocab-size", "51200",
              "--ranks", "560,1120,2240", "--tp", "8", "--pp", "35", "--global-batch-size", "2240",
              "--micro-batch-size", "1", "--recompute", "full", "--precision", "fp16", "--device", "a100-80gb",
              "--profile", "dgx-a100-hdr"]


def predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parallel_lm.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def tflops(proc) -> dict[int, float]:
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    return {int(r[0]): float(r[3]) for r in rows}


def test_calibrating_to_the_largest_run_predicts_the_smaller_ones_closer_to_what_was_published():
    plain = predict(*PTD_P_530B)
    assert plain.returncode == 0, describe(plain)
    # the measured step at 2240 GPUs, from the published 159 TFLOP/s: the model's step x its TFLOP/s / 159
    step = float(next(r for r in (line.split() for line in plain.stdout.splitlines()) if r and r[0] == "2240")[2])
    calibrated = predict(*PTD_P_530B, "--calibrate-to", f"{step * tflops(plain)[2240] / 159:.4f}@2240")
    assert calibrated.returncode == 0 and "compute x1.0" in calibrated.stdout, describe(calibrated)
    published = {560: 171, 1120: 167, 2240: 159}
    before = {g: abs(tflops(plain)[g] / p - 1) for g, p in published.items()}
    after = {g: abs(tflops(calibrated)[g] / p - 1) for g, p in published.items()}
    assert after[2240] < 0.001 and after[560] < before[560] / 2 and after[1120] < before[1120] / 2, (before, after)


@pytest.mark.parametrize("args,message", [
    (["--calibrate-to", "55@2240,5@560"], "communication weighs too alike"),
    (["--calibrate-to", "55"], "give STEP_S@GPUS"),
])
def test_a_measurement_that_cannot_be_met_gets_one_clear_error(args, message):
    proc = predict(*PTD_P_530B, *args)
    assert proc.returncode == 2 and message in proc.stderr, describe(proc)


def test_the_per_token_model_refuses_calibration():
    proc = predict("--device", "1e12", "--calibrate-to", "1@8")
    assert proc.returncode == 2 and "belong to the GPU model" in proc.stderr, describe(proc)


def test_a_runs_own_steps_give_its_factors_and_predict_takes_them():
    """train --predict prints (and writes to prediction.json) measured / predicted compute and gradient sync;
    predict --stack prices every kernel and message at those speeds."""
    from parallel_lm.costmodel.stack import parse_factors
    from parallel_lm.training.run_prediction import stack_factors
    pred = {"compute_s": 0.08, "tp_comm_s": 0.02, "comm_s": 0.01}
    assert stack_factors(pred, {"compute_s": 0.15, "comm_s": 0.03}) == pytest.approx({"compute": 1.5, "network": 3.0})
    assert stack_factors(pred, {"compute_s": 0.15, "comm_s": None})["network"] == 1.0  # one rank: no sync measured
    assert parse_factors("compute=1.5,network=3") == StackFactors(1.5, 3.0)
    assert parse_factors("network=2") == StackFactors(1.0, 2.0)
    with pytest.raises(ValueError, match="give compute=X,network=Y"):
        parse_factors("compute=fast")
    plain, slow = predict(*PTD_P_530B), predict(*PTD_P_530B, "--stack", "compute=2")
    assert slow.returncode == 0 and "# stack: compute x2.000, network x1.000" in slow.stdout, describe(slow)
    ratio = tflops(plain)[2240] / tflops(slow)[2240]
    assert 1.8 < ratio < 2.0  # the step is mostly compute: twice as slow, less its unchanged communication
