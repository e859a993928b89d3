"""The step predictor, network emulation and the plot commands."""
import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, describe, mpirun

from parallel_lm.comm.netem import NetemComm, parse
from parallel_lm.costmodel.formulas import COSTS, Network, parameter_server_sync
from parallel_lm.costmodel.predict import data_parallel_comm_s, predict_step


def cli(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


NET = Network(1e-5, 1e-9, 1e-10)
RING = lambda n: COSTS["allreduce"]["ring"](n, 8).time_s(NET)


def test_one_rank_has_no_communication_and_full_efficiency():
    pred = predict_step(n_params=10**6, flops_per_token=6e6, tokens_per_step=4096, ranks=1, flops_per_s=1e12,
                        mfu=0.5, allreduce_s=RING)
    assert pred.comm_s == 0 and pred.step_s == pytest.approx(6e6 * 4096 / 0.5e12) and pred.efficiency == 1
    assert pred.memory_bytes == {"params": 4e6, "grads": 4e6, "optimizer": 8e6}


def test_overlap_hides_communication_behind_backward_except_the_last_bucket():
    kw = dict(n_params=10**7, flops_per_token=6e7, tokens_per_step=8 * 4096, ranks=8, flops_per_s=1e12, mfu=0.5,
              allreduce_s=RING, bucket_bytes=4 * 2**20)
    on, off = predict_step(**kw, overlap=True), predict_step(**kw, overlap=False)
    comm, last = data_parallel_comm_s(4e7, 4 * 2**20, RING)
    assert on.comm_s == off.comm_s == pytest.approx(comm) and off.exposed_comm_s == pytest.approx(comm)
    assert on.exposed_comm_s == pytest.approx(max(comm - 2 / 3 * on.compute_s, last))
    assert on.step_s < off.step_s


def test_buckets_add_up_to_the_gradient():
    total, last = data_parallel_comm_s(10.5, 4, lambda n: n)  # time = bytes
    assert total == pytest.approx(10.5) and last == pytest.approx(2.5)


def test_the_parameter_server_pays_its_link():
    pred = predict_step(n_params=10**6, flops_per_token=6e6, tokens_per_step=4096, ranks=9, flops_per_s=1e12,
                        strategy="parameter_server", servers=1, ps_network=NET)
    assert pred.comm_s == pytest.approx(parameter_server_sync(4e6, 8, 1).time_s(NET))
    with pytest.raises(ValueError, match="servers < ranks"):
        predict_step(n_params=1, flops_per_token=1, tokens_per_step=1, ranks=2, flops_per_s=1,
                     strategy="parameter_server", servers=2, ps_network=NET)


class NullComm:
    def Send(self, buf, dest, tag=0):
        pass

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=0, recvtag=0, status=None):
        pass


def test_netem_makes_each_message_last_alpha_plus_bytes_beta():
    import numpy as np
    comm = NetemComm(NullComm(), 2e-3, 1e-8)
    buf = np.zeros(25_000, dtype=np.uint8)  # 0.25 ms of beta
    t0 = time.perf_counter()
    comm.Send(buf, dest=1)
    comm.Sendrecv(buf, dest=1, recvbuf=buf[:10], source=1)
    assert 2 * 2.25e-3 <= time.perf_counter() - t0 < 2 * 2.25e-3 + 25e-3  # sleeps may overrun on a busy machine
    with pytest.raises(ValueError, match="alpha=SECONDS"):
        parse("latency=3")


def test_bench_under_netem_takes_the_emulated_time(tmp_path):
    out = tmp_path / "b.json"
    proc = mpirun(2, ["-m", "parallel_lm.bench", "-a", "ring,mpi", "-b", "4K", "-e", "4K", "-n", "5", "-w", "1",
                      "--netem", "alpha=2e-3,beta=0", "--json", str(out)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    data = json.loads(out.read_text())
    assert data["meta"]["netem"]["alpha_s"] == 2e-3
    ring = next(r for r in data["records"] if r["algorithm"] == "ring")
    library = next(r for r in data["records"] if r["algorithm"] == "mpi")
    assert 4000 <= ring["time_us"] < 6000  # two ring steps of 2 ms each
    assert library["time_us"] < 1000  # the library's own collective is not delayed


def test_train_refuses_netem_where_it_cannot_act():
    proc = mpirun(2, ["-m", "parallel_lm.train", "--steps", "1", "--netem", "eth-10g", "--sync", "ps"], timeout=120)
    assert proc.returncode == 2 and "--netem delays the explicit collectives" in proc.stderr
    proc = mpirun(2, ["-m", "parallel_lm.train", "--steps", "1", "--netem", "infiniband"], timeout=120)
    assert proc.returncode == 2 and "--netem: no profile 'infiniband'" in proc.stderr and "ib-ndr" in proc.stderr


def test_predict_prints_every_rank_count_and_writes_json(tmp_path):
    out = tmp_path / "p.json"
    proc = cli("parallel_lm.predict", "--preset", "small", "--ranks", "1,8,64", "--profile", "eth-10g",
               "--device", "1e12", "--global-batch-size", "64", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["predictions"]
    assert [r["ranks"] for r in rows] == [1, 8, 64] and rows[0]["efficiency"] == 1.0
    assert rows[1]["comm_s"] > 0 and rows[2]["efficiency"] < rows[1]["efficiency"]
    assert "GiB/rank" in proc.stdout


def test_predict_explains_bad_layouts():
    proc = cli("parallel_lm.predict", "--ranks", "4", "--strategy", "parameter_server", "--servers", "4")
    assert proc.returncode == 2 and "leaves no workers" in proc.stderr
    proc = cli("parallel_lm.predict", "--device", "tpu")
    assert proc.returncode == 2 and "h100" in proc.stderr


def test_plot_comm_draws_each_rank_count_and_tables_the_error(tmp_path):
    net = Network(1e-5, 1e-9, 1e-10)
    records = [{"op": "allreduce", "algorithm": alg, "ranks": p, "size_bytes": n,
                "time_us": COSTS["allreduce"][alg](n, p).time_s(net) * 1e6 * 1.25}
               for p in (2, 4) for alg in ("ring", "tree") for n in (65536, 1 << 20, 1 << 24)]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"meta": {"op": "allreduce"}, "records": records}))
    proc = cli("parallel_lm.plot", "comm", "--bench", str(bench), "--profile", "alpha=1e-5,beta=1e-9,gamma=1e-10",
               "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for name in ("comm_p2.png", "comm_p4.svg", "comm_errors.txt"):
        assert (tmp_path / name).is_file(), name
    rows = json.loads((tmp_path / "comm_errors.json").read_text())
    assert rows[-1]["median_abs_pct"] == pytest.approx(20.0)  # predicted = measured / 1.25


def test_plot_scaling_writes_curves_for_every_strategy(tmp_path):
    proc = cli("parallel_lm.plot", "scaling", "--preset", "tiny", "--profile", "eth-10g", "--max-ranks", "16",
               "--global-batch-size", "16", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "scaling_tiny_eth-10g.json").read_text())["rows"]
    assert {r["strategy"] for r in rows} == {"naive", "tree", "ring", "recursive_doubling", "rabenseifner",
                                             "parameter server"}
    assert (tmp_path / "scaling_tiny_eth-10g.png").is_file() and "best strategy" in proc.stdout


def test_async_parameter_server_is_bounded_by_the_slower_side():
    from parallel_lm.costmodel.predict import async_ps_updates_per_s
    net = Network(0.0, 1e-9, 0.0)  # 1 GB/s, no latency, free adds
    rate, bound = async_ps_updates_per_s(1e9, workers=2, servers=1, compute_s=8.0, net=net)
    assert bound == "workers" and rate == pytest.approx(2 / 10)  # 8 s compute + 2 s own link
    rate, bound = async_ps_updates_per_s(1e9, workers=100, servers=2, compute_s=8.0, net=net)
    assert bound == "server links" and rate == pytest.approx(1 / 1.0)  # each server moves 2 x 0.5 GB per update


def test_ranks_sharing_devices_compute_slower():
    kw = dict(n_params=10**6, flops_per_token=6e6, tokens_per_step=8 * 4096, ranks=8, flops_per_s=1e12,
              allreduce_s=RING)
    own, shared = predict_step(**kw), predict_step(**kw, devices=2)
    assert shared.compute_s == pytest.approx(4 * own.compute_s)


def test_layout_terms_follow_their_formulas():
    from parallel_lm.costmodel.predict import predict_layout
    ar = lambda n, p, level: n * (p - 1) / p * (1.0 if level == "tp" else 10.0)
    pred = predict_layout(n_params=1000, flops_per_token=10.0, n_layer=4, block_size=2, n_embd=3, global_batch=16,
                          dp=2, tp=2, pp=2, micro_batches=4, zero=1, flops_per_s=1.0, mfu=1.0, allreduce_s=ar,
                          p2p_s=lambda n: n)
    assert pred.compute_s == pytest.approx(10 * 8 * 2 / 4)  # batch/dp sequences x T tokens, split tp x pp
    assert pred.bubble_s == pytest.approx(pred.compute_s * 1 / 4)
    act = 2 * 2 * 3 * 4  # micro 2 x T 2 x C 3 x 4 bytes
    assert pred.tp_comm_s == pytest.approx(4 * (4 * 2 + 2) * act / 2)
    assert pred.pp_comm_s == pytest.approx(2 * 4 * act)
    assert pred.dp_comm_s == pytest.approx(10 * 4 * 250 / 2)
    assert pred.memory_bytes == {"params": 1000, "grads": 1000, "optimizer": 12 * 250 / 2}


def test_predict_prints_layout_terms():
    proc = cli("parallel_lm.predict", "--preset", "small", "--ranks", "8", "--tp", "2", "--pp", "2", "--device", "1e12",
               "--micro-batches", "4", "--zero", "1", "--global-batch-size", "32", "--profile", "eth-10g")
    assert proc.returncode == 0, proc.stderr
    assert "bubble_ms" in proc.stdout and "tp_comm_ms" in proc.stdout


def test_plot_run_draws_several_training_runs_side_by_side(tmp_path):
    for k, name in ((1, "one"), (2, "two")):
        proc = mpirun(k, ["-m", "parallel_lm.train", "--preset", "tiny", "--steps", "4", "--eval-every", "2",
                          "--out", str(tmp_path / name)], timeout=180)
        assert proc.returncode == 0, describe(proc)
    proc = subprocess.run([sys.executable, "-m", "parallel_lm.plot", "run", str(tmp_path / "one"), str(tmp_path / "two"),
                           "--out", str(tmp_path / "plots")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plots" / "runs.png").read_bytes()[:4] == b"\x89PNG" and "runs.svg" in proc.stdout
    svg = (tmp_path / "plots" / "runs.svg").read_text()
    for text in ("throughput", "communication", "memory on rank 0", "two (validation)", "two (all communication)"):
        assert text in svg, text
    from parallel_lm.figures import RUN_PANELS, run_figure
    runs = [(name, [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
            for name in ("one", "two")]
    axes = dict(zip((title for title, *_ in RUN_PANELS), run_figure(runs).axes))
    for title in ("throughput", "communication", "memory on rank 0"):  # once a near-constant memory filled its
        assert axes[title].get_ylim()[0] == 0, title                    # axis, 0.01 MiB tall
    # all communication is a band under the exposed line, not a line that the exposed one can cover
    assert [c.get_label() for c in axes["communication"].collections] == ["one (all communication)",
                                                                          "two (all communication)"]
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "parallel_lm.plot", "run", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "has no metrics.jsonl: pass the --out folder of a training run" in proc.stderr
