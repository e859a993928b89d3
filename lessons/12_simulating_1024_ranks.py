"""Lesson 12: simulating 1,024 ranks on a laptop.

    python lessons/12_simulating_1024_ranks.py        (one process; under mpiexec -n K rank 0 runs it alone)

``parallel_lm.sim`` runs the very functions in comm/collectives/ on P
virtual ranks in one process and advances a clock per rank from a
network profile: a message starts when both ends are ready and takes
alpha + n.beta, an addition n.gamma. The trick that makes 1,024 ranks
cheap: ``comm.Get_rank()`` returns a vector of ranks, so one call of the
ring code moves every rank's chunk at once; where ranks branch apart
(``if vrank & mask``) the group splits and re-runs (sim/ranks.py).

We check the simulator against the closed-form formula (equal on a flat
network), ask which algorithm wins at which size on 1,024 ranks, run 64
ranks with real data, and then look at what the formula cannot see:
nodes with fast links inside and slow links between them, and a switch
port shared by all ranks of a node.
"""
import time
from dataclasses import replace

from parallel_lm.sizes import format_size
from parallel_lm.costmodel.formulas import COSTS
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.runtime import check, rank
from parallel_lm.sim import Topology, simulate, topology_from_profile

if rank() > 0:  # the simulated cluster lives in one process: other MPI ranks have nothing to do
    raise SystemExit(0)
P = 1024
ib = load_profile("ib-ndr")
flat = Topology.flat(ib.network())

# 1. simulator == formula on a flat network
t0 = time.perf_counter()
ring = simulate("allreduce", "ring", P, 64 << 20, flat)
wall = time.perf_counter() - t0
formula = COSTS["allreduce"]["ring"](64 << 20, P).time_s(flat.intra)
print(f"1. ring all-reduce of 64 MiB on {P} ranks of InfiniBand NDR: simulated {ring.time_s * 1e3:.3f} ms, "
      f"formula {formula * 1e3:.3f} ms ({ring.messages:,} messages, simulated in {wall:.1f} s, "
      f"{ring.groups} group of ranks)")
check(abs(ring.time_s / formula - 1) < 1e-9, "on a flat network the simulator must equal the formula")

# 2. which algorithm wins at which size
names = list(COSTS["allreduce"])  # the one-level algorithms (hierarchical needs nodes: exercise 3)
sizes = [4 << 10, 256 << 10, 16 << 20, 256 << 20]
print(f"\n2. all-reduce time on {P} ranks (ms); the winner changes with size")
print(f"{'size':>8} " + "".join(f"{n:>19}" for n in names) + "   fastest")
winners = {}
for n in sizes:
    times = {name: simulate("allreduce", name, P, n, flat).time_s for name in names}
    winners[n] = min(times, key=times.get)
    print(f"{format_size(n):>8} " + "".join(f"{times[name] * 1e3:>19.3f}" for name in names) + f"   {winners[n]}")
check(winners[4 << 10] in ("recursive_doubling", "tree"), "short messages: fewest rounds (lg p) should win")
check(winners[256 << 20] in ("ring", "rabenseifner"), "long messages: fewest bytes per rank should win")

# 3. real data on 64 virtual ranks (a thread each)
res = simulate("allreduce", "rabenseifner", 64, 4 * 6400, flat, data=True)
timing_only = simulate("allreduce", "rabenseifner", 64, 4 * 6400, flat).time_s
print(f"\n3. with data: Rabenseifner on 64 ranks sums like NumPy (max error {res.max_abs_error}), "
      f"time {res.time_s * 1e6:.1f} us (timing-only mode: {timing_only * 1e6:.1f} us)")
check(res.max_abs_error == 0.0, "the simulated all-reduce must give NumPy's sums")
check(abs(res.time_s / timing_only - 1) < 1e-9, "data and timing-only modes must give the same time")

# 4. nodes: 8 GPUs on NVLink per node, InfiniBand between nodes
dgx = load_profile("dgx-h100-ndr")
nodes = topology_from_profile(dgx)                      # hierarchical
shared = replace(topology_from_profile(dgx, "switch"), rails=1)  # plus one network port per node (a DGX has 8)
n = 64 << 20
print(f"\n4. 64 MiB on {P} ranks = {P // 8} DGX nodes; the flat formula sees only NVLink or only InfiniBand")
print(f"{'algorithm':>19} {'formula NVLink':>15} {'formula IB':>11} {'nodes':>9} {'shared port':>12}")
rows = {}
for name in names[1:]:
    f_nv = COSTS["allreduce"][name](n, P).time_s(dgx.network())
    f_ib = COSTS["allreduce"][name](n, P).time_s(dgx.slowest())
    rows[name] = (simulate("allreduce", name, P, n, nodes).time_s, simulate("allreduce", name, P, n, shared).time_s)
    print(f"{name:>19} {f_nv * 1e3:>13.2f}ms {f_ib * 1e3:>9.2f}ms {rows[name][0] * 1e3:>7.2f}ms {rows[name][1] * 1e3:>10.2f}ms")
check(abs(rows["ring"][1] / rows["ring"][0] - 1) < 1e-9, "a ring sends one message per node boundary: a shared port costs it nothing")
check(rows["recursive_doubling"][1] > 4 * rows["recursive_doubling"][0],
      "recursive doubling sends all 8 ranks of a node across the switch at once: the shared port should cost it")
print("   The ring crosses a node boundary on every step, so it runs at InfiniBand speed; recursive")
print("   doubling and Rabenseifner send every rank of a node through one port at once and queue.")
print("\nlesson 12 OK")

# Exercises
# 1. Time `simulate("allreduce", "ring", 4096, 64 << 20, flat)`. Why is it fast, and why is
#    "tree" split into only ~12 groups of ranks while Rabenseifner needs one per rank?
# 2. Find the size at which the ring overtakes recursive doubling on 1,024 ranks of
#    eth-10g, and compare with the crossover the formulas predict (set the two equal).
# 3. Read comm/collectives/hierarchical.py (reduce-scatter inside each node, one ring per local
#    rank across nodes, all-gather inside) and simulate it on the shared-port topology with
#    `replace(shared, rails=1)` and `rails=8`: why do the rails matter to it, when
#    they did not matter to the flat ring above?
# Graded: python -m parallel_lm.exercises start 12.1, then check 12.1 (docs/course.md)
