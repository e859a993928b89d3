"""All-to-all: every algorithm against MPI_Alltoall(v) on 1..8 ranks, its formula, and the simulator."""
import numpy as np
import pytest

from conftest import PROGRAMS, assert_cases, describe, mpirun
from parallel_lm.comm import ALLTOALL_ALGORITHMS, ALLTOALLV_ALGORITHMS
from parallel_lm.costmodel.formulas import Network, all_to_all_bruck, all_to_all_pairwise


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8])
def test_all_to_all_equals_the_library_bytewise(k):
    proc = mpirun(k, [str(PROGRAMS / "check_alltoall.py")], env={"PARALLEL_LM_CHECK": "1"}, timeout=240)
    refusals = ["receive buffer of another size", "two dtypes", "unknown algorithm", "p + 1 counts", "negative counts",
                "counts past the buffer"] + (["uneven blocks", "counts the senders disagree with"] if k > 1 else [])
    assert_cases(proc, [f"all_to_all {a}" for a in ALLTOALL_ALGORITHMS]
                 + [f"all_to_allv {a}" for a in ALLTOALLV_ALGORITHMS] + [f"refused: {r}" for r in refusals])


@pytest.mark.parametrize("p", [2, 4, 8, 1024])
def test_bruck_sends_half_the_data_lg_p_times_for_powers_of_two(p):
    n = 1 << 20
    cost = all_to_all_bruck(n, p)
    lg = p.bit_length() - 1
    assert cost.alpha_count == lg and cost.beta_bytes == pytest.approx(lg / 2 * n)


def test_bruck_wins_short_blocks_and_pairwise_long_ones():
    net = Network(alpha_s=5e-6, beta_s_per_byte=1e-10)
    p = 64
    assert all_to_all_bruck(4096, p).time_s(net) < all_to_all_pairwise(4096, p).time_s(net)
    assert all_to_all_pairwise(64 << 20, p).time_s(net) < all_to_all_bruck(64 << 20, p).time_s(net)


def test_the_simulator_moves_every_block_to_its_rank():
    from parallel_lm.sim import Topology, simulate
    net = Network(alpha_s=3e-6, beta_s_per_byte=2e-10)
    for name in ("pairwise", "bruck"):
        res = simulate("all_to_all", name, 11, 4 * 11 * 13, Topology.flat(net), data=True, seed=3)
        assert res.max_abs_error == 0.0
    with pytest.raises(ValueError, match="multiple of 11"):
        simulate("all_to_all", "bruck", 11, 4 * 12, Topology.flat(net))


def test_bench_all_to_all_against_the_library():
    proc = mpirun(3, ["-m", "parallel_lm.bench", "--op", "all_to_all", "-b", "64", "-e", "64K", "-f", "32",
                      "-n", "3", "-w", "1"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    rows = [ln.split() for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    assert {r[3] for r in rows} == {"mpi", "pairwise", "bruck"} and all(r[-1] == "0" for r in rows), describe(proc)
    assert np.all([int(r[1]) % 3 == 0 for r in rows])  # whole blocks per rank
