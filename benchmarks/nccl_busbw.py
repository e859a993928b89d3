"""Simulated all-reduce bus bandwidth on DGX A100 clusters beside what nccl-tests reports on such machines.

    python benchmarks/nccl_busbw.py          # about 1 minute

The simulator runs the unchanged all-reduces on the dgx-a100-hdr profile, with one switch port per NIC, for a
1 GiB float32 buffer: ring_channels.py (NCCL's ring: one ring per local rank, each leaving a node through another
NIC), hierarchical.py (phases one after the other) and hierarchical_pipelined.py (the phases overlapped on pieces); busbw follows nccl-tests (algbw x 2(P-1)/P). Gamma is 0:
NCCL adds inside its copy kernels, where our CPU code adds after each receive. Published figures (all_reduce_perf,
large messages):
- one node, 8 x A100-SXM4-80GB on NVSwitch: about 200-210 GB/s (NVIDIA/nccl-tests issues 149, 178);
  the profile's NVLink beta is this figure, so the one-node row checks the ring's step latencies only;
- 3 nodes x 8 A100-SXM4-40GB with 4 HDR NICs each: 84.8 GB/s average and 96 GB/s peak over the sizes up
  to 128 MiB (NVIDIA/nccl-tests issue 119); the profile's HDR beta is the NIC's nominal 25 GB/s;
- DGX A100 nodes with 8 x 200 Gb/s HDR NICs: 192 GB/s (an NVIDIA engineer in NVIDIA/nccl issue 812; the node
  count is not given there, and the same thread says NCCL runs its ring beyond two nodes).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parallel_lm.costmodel.formulas import Network  # noqa: E402
from parallel_lm.costmodel.profiles import load_profile  # noqa: E402
from parallel_lm.sim import simulate  # noqa: E402
from parallel_lm.sim.network import topology_from_profile  # noqa: E402

CASES = [  # (what, nodes, NICs per node, published busbw GB/s or None)
    ("1 node x 8 GPUs, NVSwitch", 1, 8, 205.0),
    ("3 nodes x 8 GPUs, 4 HDR NICs each", 3, 4, 96.0),
    ("4 DGX A100 nodes, 8 HDR rails", 4, 8, None),
    ("8 DGX A100 nodes, 8 HDR rails", 8, 8, 192.0),
    ("16 DGX A100 nodes, 8 HDR rails", 16, 8, None),
]
ALGORITHMS = ("ring_channels", "hierarchical", "hierarchical_pipelined")


def busbw(algorithm: str, nodes: int, nics: int, n: int, base) -> float:
    ranks = 8 * nodes
    res = simulate("allreduce", algorithm, ranks, n, replace(base, rails=nics))
    return n / res.time_s * 2 * (ranks - 1) / ranks / 1e9


def main():
    prof = load_profile("dgx-a100-hdr")
    n = 1 << 30
    base = topology_from_profile(prof, "switch")
    base = replace(base, intra=Network(base.intra.alpha_s, base.intra.beta_s_per_byte))  # no separate reduction
    print(f"# all-reduce of {n >> 20} MiB float32 on {prof.name}, one switch port per NIC; busbw in GB/s; "
          "error against published")
    print(f"{'cluster':>34} {'ranks':>6} {'published':>10} {'ring_channels':>14} {'error':>7} {'hierarchical':>13} "
          f"{'pipelined':>10} {'error':>7}")
    for what, nodes, nics, published in CASES:
        ring, plain, piped = (busbw(a, nodes, nics, n, base) for a in ALGORITHMS)
        err = (lambda x: f"{(x / published - 1) * 100:+6.1f}%") if published else (lambda x: "")
        print(f"{what:>34} {8 * nodes:>6} {published or '':>10} {ring:>14.1f} {err(ring):>7} {plain:>13.1f} "
              f"{piped:>10.1f} {err(piped):>7}")
    print("# NCCL runs its ring beyond two nodes; ring_channels is that ring: every byte crosses every node "
          "boundary, so its busbw tends to the node's NICs together (4 x 25 or 8 x 25 GB/s). The hierarchical "
          "all-reduces carry 2(N-1)/N of the buffer across instead of 2(P-1)/P: run one phase after the other, "
          "NVLink's time and the NICs' add up; pipelined, the slower sets the pace, past the NICs on few nodes")


if __name__ == "__main__":
    main()
