"""--tensorboard: the run's scalars as TensorBoard events, read back with tensorboard's own reader."""
import json

import pytest

from conftest import describe, mpirun

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def scalars(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_pipeline_run_in_fp16_writes_every_scalar_and_they_match_metrics_jsonl(tmp_path):
    out = tmp_path / "runs" / "a"
    proc = mpirun(2, ["-m", "parallel_lm.train", "--steps", "6", "--eval-every", "3", "--quiet", "--pp", "2",
                      "--micro-batches", "2", "--precision", "fp16", "--tensorboard", "--out", str(out)], timeout=180)
    assert proc.returncode == 0, describe(proc)
    got = scalars(out / "tb")
    assert set(got) == {"train/loss", "train/lr", "train/tokens_per_s", "train/step_s", "train/comm_s",
                        "train/exposed_comm_s", "val/loss", "train/loss_scale", "train/bubble", "train/memory_mib"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in got["train/loss"]] == [r["step"] for r in rows] == list(range(1, 7))
    assert [v for _, v in got["train/loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [s for s, _ in got["val/loss"]] == [3, 6]
    assert all(v > 0 for _, v in got["train/memory_mib"])


def test_a_parameter_server_run_writes_its_scalars_too(tmp_path):
    out = tmp_path / "ps"
    proc = mpirun(3, ["-m", "parallel_lm.train", "--sync", "ps", "--steps", "3", "--eval-every", "0", "--quiet",
                      "--tensorboard", "--out", str(out)], timeout=180)
    assert proc.returncode == 0, describe(proc)
    assert [s for s, _ in scalars(out / "tb")["train/loss"]] == [1, 2, 3]


def test_tensorboard_without_out_says_where_the_events_would_go():
    proc = mpirun(1, ["-m", "parallel_lm.train", "--steps", "1", "--tensorboard", "--quiet"], timeout=60)
    assert proc.returncode == 2 and "--tensorboard needs --out DIR" in proc.stderr, describe(proc)
