"""The cost formulas: pure properties, and agreement with the messages the code really sends."""
import json
import math

import pytest

from conftest import PROGRAMS, describe, mpirun
from parallel_lm.costmodel.formulas import (COSTS, RING_SEGMENT_BYTES, Cost, Network, allreduce_rabenseifner,
                                            allreduce_ring, bus_factor, parameter_server_sync)


def all_costs():
    return [(op, name, fn) for op, algos in COSTS.items() for name, fn in algos.items()]


@pytest.mark.parametrize("op,name,fn", all_costs(), ids=lambda v: v if isinstance(v, str) else "")
def test_one_rank_costs_nothing(op, name, fn):
    assert fn(1 << 20, 1) == Cost()


@pytest.mark.parametrize("p", [2, 4, 8, 64, 1024])
def test_ring_and_rabenseifner_share_the_bandwidth_and_reduction_terms(p):
    n = 1 << 20  # below the ring's segment size per chunk
    ring, rab = allreduce_ring(n, p), allreduce_rabenseifner(n, p)
    assert ring.beta_bytes == pytest.approx(rab.beta_bytes) == pytest.approx(2 * (p - 1) / p * n)
    assert ring.gamma_bytes == pytest.approx(rab.gamma_bytes)
    assert ring.alpha_count == 2 * (p - 1) and rab.alpha_count == 2 * math.log2(p)


def test_long_ring_chunks_pay_one_alpha_per_segment():
    n, p = 8 * RING_SEGMENT_BYTES * 4, 4  # chunks of 8 segments
    assert allreduce_ring(n, p).alpha_count == (p - 1) * 8 + (p - 1)


def test_time_and_bus_factors():
    net = Network(alpha_s=2e-6, beta_s_per_byte=1e-9, gamma_s_per_byte=1e-10)
    assert Cost(3, 1000, 500).time_s(net) == pytest.approx(3 * 2e-6 + 1000e-9 + 500e-10)
    assert bus_factor("allreduce", 8) == pytest.approx(1.75) and bus_factor("all_gather", 4) == pytest.approx(0.75)


def test_parameter_server_link_is_the_bottleneck():
    one, four = parameter_server_sync(1e6, 8), parameter_server_sync(1e6, 8, servers=4)
    assert one.beta_bytes == pytest.approx(16e6) and four.beta_bytes == pytest.approx(4e6)
    assert parameter_server_sync(1e6, 16).beta_bytes == pytest.approx(2 * one.beta_bytes)


def test_formula_segment_size_matches_the_ring_code():
    from parallel_lm.comm.collectives.ring import SEGMENT_BYTES
    assert RING_SEGMENT_BYTES == SEGMENT_BYTES


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_formulas_count_the_messages_and_bytes_the_code_sends(k):
    """alpha_count = the busiest rank's rounds and beta_bytes = its bytes per round, exactly."""
    proc = mpirun(k, [str(PROGRAMS / "count_messages.py")], timeout=120)
    assert proc.returncode == 0, describe(proc)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 * sum(len(v) for v in COSTS.values())
    for r in rows:
        cost = COSTS[r["op"]][r["algorithm"]](r["n_bytes"], k)
        where = f"{r['op']} {r['algorithm']} p={k} n={r['n_bytes']}"
        assert cost.alpha_count == r["rounds"], where
        assert cost.beta_bytes == pytest.approx(r["round_bytes"]), where
