"""Lesson 19: the hierarchical all-reduce - use the slow links between nodes as little as possible.

    mpiexec -n 4 python lessons/19_hierarchical_allreduce.py [--plot]

A cluster has two networks. Inside a node, GPUs talk over NVLink (hundreds
of GB/s); between nodes, over one NIC per GPU at best (tens of GB/s), or a
single Ethernet port. A flat ring ignores this: with ranks numbered node by
node, every step of the ring has some rank sending across a node boundary,
and a ring step is as slow as its slowest link.

The hierarchical all-reduce (comm/collectives/hierarchical.py) works in
three stages: a reduce-scatter inside each node, then an all-reduce of
each rank's 1/L piece between nodes, then an all-gather inside the node.
With L ranks per node, the slow links carry L times fewer bytes per rank,
in 2(N-1) steps instead of the ring's 2(P-1).

We run 4 ranks as 2 emulated nodes of 2 (PARALLEL_LM_RANKS_PER_NODE=2).
Messages between emulated nodes are slowed down like a slow network
(comm/netem.py, two levels); messages inside a node run at this machine's
speed.

1. Where the messages go: we count every message of each algorithm, and
   how many cross a node boundary.
2. Flat against hierarchical under the two-level network, at three sizes,
   each beside its formula. We run it with one ring per local rank (R = L
   rails, as NCCL runs a DGX) and with one leader per node (R = 1, as
   Horovod does).
3. Where the advantage ends: with the same network inside and between
   nodes the two send equal bytes per rank, and the hierarchy saves only
   latency (fewer steps): a lot at 64 MiB on 512 ranks, almost nothing at
   4 GiB. One leader per node loses to 8 rails everywhere.
"""
import numpy as np
from mpi4py import MPI

from parallel_lm import figures
from parallel_lm.bench.timing import time_interleaved
from parallel_lm.comm import allreduce
from parallel_lm.comm import settings as comm_settings
from parallel_lm.comm.collectives.hierarchical import allreduce_hierarchical
from parallel_lm.comm.netem import NetemComm
from parallel_lm.comm.trace import ObservedComm
from parallel_lm.costmodel.formulas import Network, allreduce_hierarchical_s, allreduce_ring
from parallel_lm.runtime import check, start_script, print0
from parallel_lm.sizes import format_size

start_script()
comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()
if P != 4:
    print0("This lesson emulates 2 nodes of 2 ranks: run it with mpiexec -n 4.")
    raise SystemExit(2)
L, N = 2, 2
comm_settings.configure(ranks_per_node=L)  # what PARALLEL_LM_RANKS_PER_NODE=2 would set


class NodeCounting(ObservedComm):
    """Counts this rank's messages, and those whose peer is on another node."""

    def __init__(self, comm):
        super().__init__(comm)
        self.messages = self.crossing = self.crossing_bytes = 0

    def observe(self, call, sendbuf=None, dest=None, recvbuf=None, source=None):
        if sendbuf is not None:
            self.messages += 1
            if dest // L != rank // L:
                self.crossing += 1
                self.crossing_bytes += sendbuf.nbytes


print0(f"1. Where the messages go: 4 ranks = {N} nodes x {L}; rank r on node r // {L}\n")
n = 1 << 16  # float32 values: 256 KiB
print0(f"   {'algorithm':>26} {'messages sent':>14} {'crossing nodes':>15} {'bytes across, busiest rank':>27}")
variants = {"flat ring": lambda b, c: allreduce(b, c, algorithm="ring"),
            "hierarchical, 2 rails": lambda b, c: allreduce_hierarchical(b, c, L, 2),
            "hierarchical, 1 leader": lambda b, c: allreduce_hierarchical(b, c, L, 1)}
crossed = {}
for name, run in variants.items():
    counted = NodeCounting(comm)
    x = np.full(n, rank + 1, np.float32)
    run(x, counted)
    check(np.all(x == 10), f"{name}: the sum 1 + 2 + 3 + 4")
    sent, crossing = (comm.allreduce(v, op=MPI.SUM) for v in (counted.messages, counted.crossing))
    crossed[name] = comm.allreduce(counted.crossing_bytes, op=MPI.MAX)
    print0(f"   {name:>26} {sent:>14} {crossing:>15} {format_size(crossed[name]):>27}")
check(crossed["hierarchical, 2 rails"] * 3 == crossed["flat ring"], "2(P-1)/P n against 2(N-1)/N n/L: 3x fewer")
print0("   Messages are counted over all ranks. Ranks 1 and 3 send across a node boundary on every one of the\n"
       "   ring's 6 steps, so every step waits for a slow link; the hierarchy crosses in 2 steps of the same\n"
       "   size (n/4), one ring per local rank. The leader carries its node's whole half: 2 steps of n/2.\n")

inside, between = Network(0.0, 0.0), Network(5e-5, 1e-8)  # this machine inside; 50 us + 0.1 GB/s between
print0(f"2. Measured under two levels: between nodes {between.alpha_s * 1e6:.0f} us + bytes / "
       f"{1e-9 / between.beta_s_per_byte:.1f} GB/s, inside a node this machine's speed\n")
slow = NetemComm(comm, between.alpha_s, between.beta_s_per_byte, inside, L)
gamma = 1 / 5e9  # reductions at memory speed, roughly, for the formula's intra-node level
here = Network(0.0, gamma / 3, gamma)
formulas = {"flat ring": lambda b: allreduce_ring(b, P).time_s(Network(between.alpha_s, between.beta_s_per_byte, gamma)),
            "hierarchical, 2 rails": lambda b: allreduce_hierarchical_s(b, L, N, here, between, rails=2, rings=2),
            "hierarchical, 1 leader": lambda b: allreduce_hierarchical_s(b, L, N, here, between, rails=2, rings=1)}
print0(f"   {'bytes':>7} " + "".join(f"{name:>24}" for name in variants) + "   (measured ms / formula ms)")
ratios, seen = [], {name: [] for name in variants}
for size in (64 << 10, 1 << 20, 4 << 20):
    src = np.random.default_rng(rank).integers(-3, 4, size // 4).astype(np.float32)
    want = src.copy()
    comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
    buf = src.copy()
    runs = {name: (lambda run=run: run(buf, slow)) for name, run in variants.items()}
    times = time_interleaved(comm, runs, lambda: np.copyto(buf, src), warmup=1, iters=5)
    cells = []
    for name in variants:
        np.copyto(buf, src)
        runs[name]()
        check(np.array_equal(buf, want), f"{name} equals MPI_Allreduce at {size} bytes")
        measured, formula = times[name][0], formulas[name](size)
        check(measured > 0.95 * formula - 1e-4, f"{name}: no run beats the emulated network")
        cells.append(f"{measured * 1e3:>10.2f} / {formula * 1e3:>7.2f}")
        seen[name].append((size, measured, formula))
    ratios.append(times["flat ring"][0] / times["hierarchical, 2 rails"][0])
    print0(f"   {format_size(size):>7} " + "".join(f"{c:>24}" for c in cells))
print0(f"\n   The flat ring took {ratios[-1]:.1f}x as long as the hierarchy with 2 rails at the largest size; "
       f"the formula says {formulas['flat ring'](4 << 20) / formulas['hierarchical, 2 rails'](4 << 20):.1f}x.")
check(ratios[-1] > 1.5, "with slow links between nodes, the hierarchy wins by far at 4 MiB")
if figures.wanted() and rank == 0:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, points) in enumerate(seen.items()):
        sizes = [n for n, _, _ in points]
        ax.loglog(sizes, [m * 1e3 for _, m, _ in points], "o", color=f"C{i}", label=f"{name}, measured")
        ax.loglog(sizes, [f * 1e3 for _, _, f in points], "--", color=f"C{i}", label=f"{name}, formula")
    ax.set_xlabel("bytes all-reduced")
    ax.set_ylabel("ms")
    ax.set_title(f"lesson 19: {N} emulated nodes of {L}, slow links between them", fontsize=10)
    ax.legend(fontsize=8)
    print0(f"   drew {figures.save(fig, '19_flat_vs_hierarchical')}")
print0("   One leader per node sends the whole buffer between nodes, so it gains less: the rails matter.\n")

print0("3. Where the advantage ends (formulas; 64 nodes of 8 GPUs, NVLink inside a node):\n")
nvlink = Network(2e-6, 1 / 450e9)
print0(f"   {'between nodes':>18} {'size':>6} {'flat ring ms':>13} {'hier. 8 rails':>14} {'hier. 1 leader':>15} "
       f"{'flat / 8 rails':>15}")
gain = {}
for label, net in (("same as NVLink", nvlink), ("NDR IB, 50 GB/s", Network(5e-6, 1 / 50e9)),
                   ("10 GbE, 1.25 GB/s", Network(2e-5, 8e-10))):
    for size in ((64 << 20, 4 << 30) if net is nvlink else (64 << 20,)):
        flat = allreduce_ring(size, 512).time_s(net)
        rails8 = allreduce_hierarchical_s(size, 8, 64, nvlink, net, rails=8)
        leader = allreduce_hierarchical_s(size, 8, 64, nvlink, net, rails=8, rings=1)
        gain[label, size] = flat / rails8
        shown = f"{size >> 20} MiB" if size < 1 << 30 else f"{size >> 30} GiB"
        print0(f"   {label:>18} {shown:>6} {flat * 1e3:>13.2f} "
               f"{rails8 * 1e3:>14.2f} {leader * 1e3:>15.2f} {flat / rails8:>14.1f}x")
        check(rails8 < leader, "one leader per node sends the whole buffer between nodes: 8 rails beat it everywhere")
print0("   On one network the hierarchy moves as many bytes per rank as the flat ring, in 2(L-1) + 2(N-1) steps\n"
       "   instead of 2(P-1): at 64 MiB over 512 ranks the ring's 1,022 latencies still dominate, and the\n"
       "   hierarchy wins on those alone. At 4 GiB the bytes dominate and the gain is nearly gone. Between\n"
       "   nodes on slower links, the gain grows with the gap between the two levels. One leader per node\n"
       "   funnels every byte through one NIC: it beats the flat ring where latency or the slow links dominate,\n"
       "   loses to it at 4 GiB on one network, and loses to 8 rails everywhere.")
check(gain["same as NVLink", 4 << 30] < 1.2 < gain["same as NVLink", 64 << 20],
      "on one network only latency is saved: the gain fades as the message grows")
print0("\nlesson 19 OK")

# Exercises
# 1. Change L to 1 (4 nodes of 1 rank): what is left of the hierarchy, and what do the counts in part 1 say?
# 2. Set PARALLEL_LM_RANKS_PER_NODE=2 and train: mpiexec -n 4 python -m parallel_lm.train --allreduce
#    hierarchical --steps 20. Does the loss match --allreduce ring? Why must it, to the last bits or not?
# 3. In part 3, at what size does the flat ring come within 10% of 8 rails on one network? Why there?
# Graded: python -m parallel_lm.exercises start 19.1, then check 19.1 (docs/course.md)
