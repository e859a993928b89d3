"""Calibration fits, profiles and the calibrate / simulate command lines."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import describe, mpirun

from parallel_lm.costmodel.calibration import fit_line, fit_piecewise, latency_and_bandwidth
from parallel_lm.costmodel.compare import compare, error_table
from parallel_lm.costmodel.formulas import COSTS
from parallel_lm.costmodel.profiles import PROFILE_NAMES, load_profile

SIZES = [8 * 4 ** k for k in range(12)]


def test_a_line_fit_recovers_alpha_and_beta_from_noisy_times():
    rng = np.random.default_rng(0)
    alpha, beta = 3e-6, 1e-10
    times = [(alpha + n * beta) * rng.uniform(0.97, 1.03) for n in SIZES]
    a, b, _ = fit_line(SIZES, times)
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)


def test_the_piecewise_fit_finds_a_protocol_switch():
    eager = [2e-6 + n * 5e-10 for n in SIZES if n < 65536]
    rendezvous = [30e-6 + n * 1e-10 for n in SIZES if n >= 65536]
    fit = fit_piecewise(SIZES, eager + rendezvous)
    assert len(fit.pieces) == 2 and 32768 < fit.pieces[0].max_bytes < 131072
    small, large = fit.pieces
    assert small.alpha_s == pytest.approx(2e-6, rel=1e-6) and large.beta_s_per_byte == pytest.approx(1e-10, rel=1e-6)
    assert max(abs(r) for r in fit.residuals) < 1e-9


def test_a_straight_line_keeps_one_piece():
    assert len(fit_piecewise(SIZES, [5e-6 + n * 2e-10 for n in SIZES]).pieces) == 1


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_shipped_profiles_cite_a_source_for_every_number(name):
    prof = load_profile(name)
    assert prof.alpha_s > 0 and prof.beta_s_per_byte > 0 and prof.gamma_s_per_byte > 0
    for key in ("alpha_s", "beta_s_per_byte", "gamma_s_per_byte"):
        assert len(prof.sources[key]) > 20, key
    if prof.inter_node:
        assert prof.ranks_per_node > 1 and set(prof.raw["inter_node"]["sources"]) == {"alpha_s", "beta_s_per_byte"}
        assert prof.inter_node.beta_s_per_byte > prof.beta_s_per_byte


def test_profile_errors_say_what_to_give():
    with pytest.raises(ValueError, match="ib-ndr"):
        load_profile("infiniband")
    with pytest.raises(ValueError, match="alpha=SECONDS"):
        load_profile("alpha=1e-6,bandwidth=3")
    assert load_profile("alpha=1e-6,beta=2e-10").network().beta_s_per_byte == 2e-10


def test_compare_predicts_what_the_formula_says_and_tables_the_error():
    prof = load_profile("alpha=1e-5,beta=1e-9,gamma=1e-10")
    want = COSTS["allreduce"]["ring"](1 << 20, 4).time_s(prof.network())
    records = [{"op": "allreduce", "algorithm": "ring", "ranks": 4, "size_bytes": 1 << 20, "time_us": want * 1.1e6},
               {"op": "allreduce", "algorithm": "mpi", "ranks": 4, "size_bytes": 1 << 20, "time_us": 1.0}]
    points = compare(records, lambda ranks: prof)
    assert len(points) == 1 and points[0].rel_error == pytest.approx(1 / 1.1 - 1)
    assert error_table(points)[-1]["median_abs_pct"] == pytest.approx(100 * (1 - 1 / 1.1))


def test_calibrate_writes_a_profile_that_predicts_its_own_exchanges(tmp_path):
    out = tmp_path / "me.json"
    proc = mpirun(2, ["-m", "parallel_lm.calibrate", "--out", str(out), "-e", "1M", "-n", "5"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    prof = load_profile(str(out))
    assert prof.alpha_s > 0 and prof.beta_s_per_byte > 0 and prof.gamma_s_per_byte > 0 and prof.raw["ranks"] == 2
    for fit in ("exchange", "pingpong"):
        points = prof.raw["fits"][fit]["points"]
        assert [p["bytes"] for p in points] == SIZES[:9]  # 8 B to 512 KiB
    assert "alpha" in proc.stdout and "wrote" in proc.stdout
    # the ranks per core the numbers hold for (ranks sharing cores exchange more slowly)
    cores = len(os.sched_getaffinity(0))  # mpiexec (MPICH's hydra) leaves the ranks unbound: each sees them all
    assert prof.raw["local_ranks"] == 2 and prof.raw["cores"] == cores
    assert f"2 ranks on {cores} cores here" in proc.stdout


def test_calibrate_needs_two_ranks(tmp_path):
    proc = mpirun(1, ["-m", "parallel_lm.calibrate", "--out", str(tmp_path / "x.json")], timeout=60)
    assert proc.returncode == 2 and "at least 2" in proc.stderr


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "parallel_lm.simulate", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_simulate_prints_sim_formula_and_their_ratio(tmp_path):
    proc = run_cli("-a", "all", "-r", "5,64", "-s", "640K", "--profile", "eth-10g", "--json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert len(records) == 16  # 8 all-reduce algorithms (the ones with nodes included) x 2 rank counts
    for r in records:
        assert r["sim_s"] == pytest.approx(r["formula_s"], rel=1e-12)
    assert "sim/formula" in proc.stdout and "1.0000" in proc.stdout


def test_simulate_rejects_bad_input_with_the_fix():
    proc = run_cli("-a", "nccl")
    assert proc.returncode == 2 and "valid: naive, tree, ring" in proc.stderr
    proc = run_cli("--profile", "ib-ndr", "--topology", "switch")
    assert proc.returncode == 2 and "two-level profile" in proc.stderr


def test_simulate_rails_set_the_ports_per_node(tmp_path):
    times = {}
    for rails in ("1", "8"):
        out = tmp_path / f"r{rails}.json"
        proc = run_cli("-a", "recursive_doubling", "-r", "64", "-s", "4M", "--profile", "dgx-h100-ndr", "--topology",
                       "switch", "--rails", rails, "--json", str(out))
        assert proc.returncode == 0, proc.stderr
        assert f"{rails} shared port(s) per node" in proc.stdout
        times[rails] = json.loads(out.read_text())["records"][0]["sim_s"]
    assert times["1"] > 3 * times["8"]  # all 8 ranks of a node cross at once: one port queues them


def test_latency_and_bandwidth_stay_sane_where_one_line_through_noise_does_not():
    """Lesson 05 once printed "alpha = 0.00 us, beta = 285627.5 ps/byte" on a busy machine: there, the short
    messages' times grew with size through scheduling delays alone, and a fit through them was all slope."""
    sizes = [64 << 2 * k for k in range(10)]  # 64 B .. 16 MiB
    times = np.array([18, 70, 290, 60, 80, 100, 190, 420, 1400, 5200]) * 1e-6
    short_piece = fit_piecewise(sizes, times).pieces[0]
    assert short_piece.alpha_s < 1e-6 and short_piece.beta_s_per_byte > 2e-7  # the nonsense, reproduced
    alpha, beta = latency_and_bandwidth(sizes, times)
    assert 10e-6 < alpha < 100e-6  # the short messages' typical time
    assert 0.25e-9 < beta < 0.4e-9  # 2.5-4 GB/s: the slope of the long messages
