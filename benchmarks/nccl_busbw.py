"""Simulated all-reduce bus bandwidth on DGX A100 clusters beside what nccl-tests reports on such machines.

    python benchmarks/nccl_busbw.py

The simulator runs the unchanged hierarchical all-reduce (comm/collectives/hierarchical.py) on the
dgx-a100-hdr profile, with one switch port per NIC rail, for a 1 GiB float32 buffer; busbw follows
nccl-tests (algbw x 2(P-1)/P). Gamma is 0: NCCL adds inside its copy kernels, where our CPU code adds
after each receive. Published figures (all_reduce_perf, large messages):
- one node, 8 x A100-SXM4-80GB on NVSwitch: about 200-210 GB/s (NVIDIA/nccl-tests issues 149, 178);
  the profile's NVLink beta is this figure, so the one-node row checks the ring's step latencies only;
- 3 nodes x 8 A100-SXM4-40GB with 4 HDR NICs each: 84.8 GB/s average and 96 GB/s peak over the sizes up
  to 128 MiB (NVIDIA/nccl-tests issue 119); the profile's HDR beta is the NIC's nominal 25 GB/s.
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

CASES = [  # (what, ranks, rails per node, published busbw GB/s)
    ("1 node x 8 GPUs, NVSwitch", 8, 8, 205.0),
    ("3 nodes x 8 GPUs, 4 HDR NICs each", 24, 4, 84.8),
]


def main():
    prof = load_profile("dgx-a100-hdr")
    n = 1 << 30
    base = topology_from_profile(prof, "switch")
    base = replace(base, intra=Network(base.intra.alpha_s, base.intra.beta_s_per_byte))  # no separate reduction
    print(f"# hierarchical all-reduce of {n >> 20} MiB float32 on {prof.name}, one switch port per rail")
    print(f"{'cluster':>36} {'ranks':>6} {'sim_busbw':>10} {'published':>10} {'error':>7}")
    for what, ranks, rails, published in CASES:
        topo = replace(base, rails=rails)
        res = simulate("allreduce", "hierarchical", ranks, n, topo)
        busbw = n / res.time_s * 2 * (ranks - 1) / ranks / 1e9
        print(f"{what:>36} {ranks:>6} {busbw:>10.1f} {published:>10.1f} {(busbw / published - 1) * 100:>+6.1f}%")
    for nodes in (4, 16):
        res = simulate("allreduce", "hierarchical", 8 * nodes, n, base)
        busbw = n / res.time_s * 2 * (8 * nodes - 1) / (8 * nodes) / 1e9
        print(f"{f'{nodes} DGX A100 nodes, 8 HDR rails':>36} {8 * nodes:>6} {busbw:>10.1f} {'':>10} {'':>7}")
    print("# NCCL's rings overlap the NVLink and InfiniBand phases (pipelined chunks); this algorithm runs them one "
          "after the other, so on 8-rail clusters it stays near 1/(1.75/205 + 2/200) = 108 GB/s where the NICs allow 200")


if __name__ == "__main__":
    main()
