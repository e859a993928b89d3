"""The hierarchical all-reduce under MPI: every node size and rail count against the library,
nodes emulated or from the shared-memory split, and bad node sizes refused on every rank."""
import pytest

from conftest import PROGRAMS, assert_cases, describe, mpirun
from parallel_lm.costmodel.formulas import Network, allreduce_hierarchical_s, allreduce_ring


def divisors(m):
    return [d for d in range(1, m + 1) if m % d == 0]


@pytest.mark.parametrize("k,per_node", [(1, None), (4, None), (4, 2), (6, 2), (6, 3), (8, 4)])
def test_every_node_size_and_rail_count_and_the_pipelined_one_equal_the_library(k, per_node):
    env = {"PARALLEL_LM_RANKS_PER_NODE": str(per_node)} if per_node else {}
    proc = mpirun(k, [str(PROGRAMS / "check_hierarchical.py")], env=env, timeout=240)
    names = [f"nodes of {d}, {r} rail(s)" for d in divisors(k) for r in divisors(d)] + ["registry"]
    names += [f"pipelined nodes of {d}" for d in divisors(k)] + ["pipelined registry"]
    names += [f"channels nodes of {d}" for d in divisors(k)]
    got = assert_cases(proc, names + (["refused"] if k > 1 else []))
    # without the variable, one machine is one node: the shared-memory split puts all k ranks on it
    assert got["registry"]["per_node"] == (per_node or k), describe(proc)


def test_a_node_size_that_does_not_divide_the_ranks_is_refused_on_every_rank():
    code = ("import numpy as np; from parallel_lm import environment; from parallel_lm.comm import allreduce; "
            "environment.apply(); allreduce(np.ones(8), algorithm='hierarchical')")
    proc = mpirun(6, ["-c", code], env={"PARALLEL_LM_RANKS_PER_NODE": "4"}, timeout=60)
    assert proc.returncode != 0 and "4 ranks per node do not divide the 6 ranks" in proc.stderr, describe(proc)
    proc = mpirun(4, ["-c", code], env={"PARALLEL_LM_RANKS_PER_NODE": "2", "PARALLEL_LM_RAILS": "3"}, timeout=60)
    assert proc.returncode != 0 and "PARALLEL_LM_RAILS=3 must divide the 2 ranks per node" in proc.stderr, describe(proc)


def test_train_refuses_emulated_nodes_that_do_not_divide_the_data_parallel_ranks():
    args = ["-m", "parallel_lm.train", "--steps", "1", "--data", "synthetic", "--allreduce", "hierarchical"]
    proc = mpirun(4, args, env={"PARALLEL_LM_RANKS_PER_NODE": "3"}, timeout=60)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count("PARALLEL_LM_RANKS_PER_NODE=3 must be a positive divisor of the 4 data-parallel") == 1, \
        describe(proc)


def test_fewer_rails_carry_more_bytes_between_nodes():
    intra, inter = Network(1e-6, 1e-11), Network(5e-5, 1e-8)
    n, local, nodes = 1 << 24, 4, 8
    times = [allreduce_hierarchical_s(n, local, nodes, intra, inter, rails=8, rings=r) for r in (1, 2, 4)]
    assert times[0] > times[1] > times[2]
    # one ring per local rank carries n/L: L times fewer bytes between nodes than a flat ring's slowest link
    flat = allreduce_ring(n, local * nodes).time_s(inter)
    assert times[2] < flat / 3


class _Rank:
    def __init__(self, rank):
        self.rank = rank

    def Get_rank(self):
        return self.rank


def test_two_level_netem_prices_messages_by_whether_they_leave_the_node():
    from parallel_lm.comm.netem import NetemComm
    from parallel_lm.runtime import netem_inside
    spec = "alpha=1e-6,beta=1e-10,inter_alpha=5e-5,inter_beta=1e-8,ranks_per_node=2"
    inside, per_node = netem_inside(spec)
    assert per_node == 2 and inside == Network(1e-6, 1e-10)
    comm = NetemComm(_Rank(3), 5e-5, 1e-8, inside, per_node)  # rank 3 lives on node 1 with rank 2
    assert comm._seconds(2, 1000) == pytest.approx(1e-6 + 1000e-10)
    assert comm._seconds(1, 1000) == comm._seconds(4, 1000) == pytest.approx(5e-5 + 1000e-8)
    one_level = NetemComm(_Rank(3), 5e-5, 1e-8)
    assert one_level._seconds(2, 1000) == pytest.approx(5e-5 + 1000e-8)
