"""The simulated cluster: same code as real MPI, same time as the formulas on a flat network."""
import numpy as np
import pytest

from parallel_lm.costmodel.formulas import Network
from parallel_lm.sim import OPS, Deadlock, Topology, replay, simulate
from parallel_lm.sim.run import _record_groups

NET = Network(alpha_s=3e-6, beta_s_per_byte=2e-10, gamma_s_per_byte=5e-11)
INTER = Network(alpha_s=2e-5, beta_s_per_byte=1e-9, gamma_s_per_byte=5e-11)
CASES = [(op, name) for op, algos in OPS.items() for name in algos]


def even_bytes(p: int, k: int = 3) -> int:
    """A size whose p chunks and power-of-two blocks are all whole float32 elements."""
    pof2 = 1 << (p.bit_length() - 1)
    return 4 * p * pof2 * k


@pytest.mark.parametrize("op,name", CASES)
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 33, 64])
def test_flat_network_time_equals_the_formula(op, name, p):
    pof2 = 1 << (p.bit_length() - 1)
    segmented = even_bytes(p, (5 << 20) // (8 * pof2) + 1)  # ring chunks of 2.5 MiB: three segments
    for n in (even_bytes(p), segmented):
        res = simulate(op, name, p, n, Topology.flat(NET))
        want = res.formula_s(Topology.flat(NET))  # COSTS, or the two-level formula for hierarchical
        # the pipelined formula prices n/(K L) bytes per chunk, where the K pieces' chunks may differ by an element
        rel = 1e-4 if name == "hierarchical_pipelined" else 1e-12
        assert res.time_s == pytest.approx(want, rel=rel, abs=1e-15), (res.engine, res.groups)


@pytest.mark.parametrize("op,name", CASES)
@pytest.mark.parametrize("p", [3, 16, 64])
def test_data_mode_sums_like_numpy_and_times_like_timing_mode(op, name, p):
    topo = Topology(NET, INTER, ranks_per_node=4)
    n = 4 * (p * 37 + 5) if op != "all_to_all" else 4 * p * 37  # uneven chunks on purpose; all-to-all: equal blocks
    real = simulate(op, name, p, n, topo, data=True, seed=p)
    assert real.max_abs_error == 0.0
    timed = simulate(op, name, p, n, topo)
    assert real.time_s == pytest.approx(timed.time_s, rel=1e-12)
    assert real.messages == timed.messages


@pytest.mark.parametrize("op,name", [("allreduce", "ring"), ("allreduce", "rabenseifner"),
                                     ("reduce_scatter", "recursive_halving"), ("all_gather", "recursive_doubling")])
def test_vectorized_and_event_engines_agree(op, name):
    topo = Topology(NET, INTER, ranks_per_node=4)
    groups = _record_groups(OPS[op][name], 16, 16 * 1000, np.float32)
    fast = replay.lockstep(groups, 16, topo)
    assert fast is not None
    np.testing.assert_allclose(fast, replay.events(groups, 16, topo), rtol=1e-12)


def test_a_ring_runs_once_for_all_ranks():
    res = simulate("allreduce", "ring", 512, 4 * 512 * 100, Topology.flat(NET))
    assert res.groups == 1 and res.engine == "lockstep" and res.messages == 512 * 2 * 511


def test_a_tree_splits_into_groups_that_take_the_same_path():
    res = simulate("allreduce", "tree", 1024, 4096, Topology.flat(NET))
    assert 1 < res.groups <= 12  # one group per round a rank drops out, not one per rank


def test_hierarchy_slows_inter_node_messages():
    n, p = 4 * 64 * 1024, 64
    flat = simulate("allreduce", "ring", p, n, Topology.flat(NET)).time_s
    nodes = simulate("allreduce", "ring", p, n, Topology(NET, INTER, ranks_per_node=8)).time_s
    slow = simulate("allreduce", "ring", p, n, Topology.flat(INTER)).time_s
    assert flat < nodes <= slow * (1 + 1e-12)


def test_shared_ports_show_contention_the_formula_misses():
    """Recursive doubling sends every rank of a node across the switch at once; the ring only one."""
    n, p = 4 * 64 * 1024, 32
    for name, slower in (("recursive_doubling", True), ("ring", False)):
        free = simulate("allreduce", name, p, n, Topology(NET, INTER, ranks_per_node=4)).time_s
        shared = simulate("allreduce", name, p, n, Topology(NET, INTER, ranks_per_node=4, shared_port=True)).time_s
        assert (shared > 1.5 * free) if slower else shared == pytest.approx(free, rel=1e-12), name


def receive_first(buf, comm):
    """Every rank waits for its left neighbour before sending: hangs on any real network."""
    rank, p = comm.Get_rank(), comm.Get_size()
    comm.Recv(buf, source=(rank - 1) % p, tag=1)
    comm.Send(buf, dest=(rank + 1) % p, tag=1)


@pytest.mark.parametrize("data", [False, True])
def test_a_deadlocking_algorithm_is_reported_not_hung(monkeypatch, data):
    monkeypatch.setitem(OPS["allreduce"], "receive_first", receive_first)
    with pytest.raises(Deadlock, match="never finish|deadlock"):
        simulate("allreduce", "receive_first", 5, 400, Topology.flat(NET), data=data)


def test_bad_requests_name_the_fix():
    with pytest.raises(ValueError, match="valid: naive, tree, ring"):
        simulate("allreduce", "nccl", 4, 64, Topology.flat(NET))
    with pytest.raises(ValueError, match="multiple of the float32 item size"):
        simulate("allreduce", "ring", 4, 6, Topology.flat(NET))
    with pytest.raises(ValueError, match="timing-only mode"):
        simulate("allreduce", "ring", 4096, 4096 * 4, Topology.flat(NET), data=True)
    with pytest.raises(ValueError, match="inter-node network and ranks_per_node"):
        Topology(NET, ranks_per_node=4)


# -- the hierarchical, multi-rail all-reduce -------------------------------------------------------------

@pytest.mark.parametrize("ranks, per_node, rails", [(8, 8, 8), (16, 4, 4), (24, 8, 8), (12, 3, 1)])
def test_hierarchical_allreduce_simulated_equals_its_two_level_formula(ranks, per_node, rails):
    from parallel_lm.costmodel.formulas import allreduce_hierarchical_s
    intra, inter = Network(1e-6, 1 / 200e9, 1e-12), Network(5e-6, 1 / 25e9)
    topo = Topology(intra, inter, per_node, shared_port=True, rails=rails)
    n = 4 * 3_000_000  # whole elements in every chunk at every level
    res = simulate("allreduce", "hierarchical", ranks, n, topo)
    want = allreduce_hierarchical_s(n, per_node, ranks // per_node, intra, inter, rails)
    if rails >= per_node or ranks == per_node:  # no two rings share a NIC: the formula is exact
        assert res.time_s == pytest.approx(want, rel=1e-9)
    else:  # rings sharing a NIC queue for it; the formula's local/rails slowdown is the steady state
        assert res.time_s == pytest.approx(want, rel=0.1)
    assert res.formula_s(topo) == pytest.approx(want, rel=1e-12)


def test_hierarchical_allreduce_sums_exactly_in_data_mode():
    topo = Topology(Network(1e-6, 1e-10), Network(5e-6, 1e-9), 4)
    res = simulate("allreduce", "hierarchical", 12, 4 * 1001, topo, data=True)
    assert res.max_abs_error == 0.0


def test_rails_divide_the_inter_node_time():
    intra, inter = Network(1e-6, 1 / 200e9), Network(5e-6, 1 / 25e9)
    one, eight = (simulate("allreduce", "hierarchical", 32, 1 << 26, Topology(intra, inter, 8, True, rails))
                  for rails in (1, 8))
    assert one.time_s > 3 * eight.time_s


# -- the pipelined hierarchical all-reduce: messages in flight together -----------------------------------

@pytest.mark.parametrize("ranks, per_node, pieces, shared", [(8, 4, 6, False), (8, 4, 6, True), (6, 3, 4, False),
                                                              (16, 8, 20, True), (4, 1, 3, False), (5, 5, 2, False)])
def test_pipelined_allreduce_simulated_equals_its_formula_and_sums_exactly(ranks, per_node, pieces, shared):
    import functools

    from parallel_lm.comm.collectives.hierarchical_pipelined import allreduce_hierarchical_pipelined
    from parallel_lm.costmodel.formulas import allreduce_hierarchical_pipelined_s
    intra, inter = Network(1e-6, 1e-10, 1e-11), Network(5e-6, 4e-10)
    topo = Topology(intra, inter, per_node, shared_port=shared, rails=per_node)
    n = 4 * pieces * ranks * 30  # whole elements in every piece, chunk and part
    fn = functools.partial(allreduce_hierarchical_pipelined, ranks_per_node=per_node, pieces=pieces)
    res = simulate("allreduce", fn, ranks, n, topo, data=True)
    assert res.max_abs_error == 0.0
    want = allreduce_hierarchical_pipelined_s(n, per_node, ranks // per_node, intra, inter, pieces)
    assert res.time_s == pytest.approx(want, rel=1e-9)
    assert res.engine == "events" and res.messages == 2 * ranks * pieces * ((per_node - 1) + (ranks // per_node - 1))


def test_pipelining_hides_the_node_phases_behind_the_nics():
    """On 4 nodes of 8 A100-like ranks with 8 rails, the one-after-the-other algorithm pays NVLink plus the NICs;
    the pipelined one about the slower of the two (and its fill and drain), with a formula equal to its simulation."""
    intra, inter = Network(1e-6, 1 / 205e9), Network(5e-6, 1 / 25e9)
    topo = Topology(intra, inter, 8, shared_port=True, rails=8)
    n = 1 << 28
    plain, piped = (simulate("allreduce", a, 32, n, topo) for a in ("hierarchical", "hierarchical_pipelined"))
    nvlink = 2 * 7 / 8 * n / 205e9  # each rank's bytes in the node: reduce-scatter and all-gather
    nics = 2 * 3 / 4 * n / 8 / 25e9  # each NIC's: 2(N-1)/N of the n/L chunk of its ring
    assert plain.time_s > nvlink + nics and piped.time_s < 1.25 * max(nvlink, nics)
    assert piped.time_s == pytest.approx(piped.formula_s(topo), rel=1e-9)


def test_blocking_messages_wait_for_started_ones():
    from parallel_lm.sim.comm import GroupComm, Recorder
    comm = GroupComm(0, 2, Recorder())
    comm.Isend(np.zeros(4), dest=1)
    with pytest.raises(ValueError, match="only once they are waited for"):
        comm.Send(np.zeros(4), dest=1)


@pytest.mark.parametrize("ranks, per_node, shared, rails", [(8, 4, False, 4), (8, 4, True, 2), (12, 4, True, 4),
                                                            (6, 3, False, 3), (5, 5, False, 5), (4, 1, False, 1)])
def test_ring_channels_simulated_equals_its_formula_and_sums_exactly(ranks, per_node, shared, rails):
    intra, inter = Network(1e-6, 1e-10, 1e-11), Network(5e-6, 4e-10)
    topo = Topology(intra, inter, per_node, shared_port=shared, rails=rails)
    res = simulate("allreduce", "ring_channels", ranks, 4 * per_node * ranks * 50, topo, data=True)
    assert res.max_abs_error == 0.0
    assert res.time_s == pytest.approx(res.formula_s(topo), rel=1e-9)
    assert res.messages == 2 * (ranks - 1) * ranks * per_node


def test_ring_channels_reach_the_nodes_nics_together():
    """8 rings, each leaving a node through another rank's NIC: the bus bandwidth of 8 x 25 GB/s NICs, less one
    alpha per step, where one ring alone gets one NIC's."""
    intra, inter = Network(1e-6, 1 / 205e9), Network(5e-6, 1 / 25e9)
    topo = Topology(intra, inter, 8, shared_port=True, rails=8)
    n, p = 1 << 28, 32
    busbw = {a: n / simulate("allreduce", a, p, n, topo).time_s * 2 * (p - 1) / p for a in ("ring", "ring_channels")}
    assert 0.85 * 200e9 < busbw["ring_channels"] < 200e9 and busbw["ring"] < 26e9  # alpha: 5 us on 42 us
