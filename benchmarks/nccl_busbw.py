"""Simulated all-reduce bus bandwidth on DGX A100 clusters beside what nccl-tests reports on such machines.

    python benchmarks/nccl_busbw.py          # about 1 minute

The simulator runs the unchanged hierarchical all-reduces (comm/collectives/hierarchical.py, phases one after
the other, and hierarchical_pipelined.py, the phases overlapped on pieces) on the dgx-a100-hdr profile, with one
switch port per NIC rail, for a 1 GiB float32 buffer; busbw follows nccl-tests (algbw x 2(P-1)/P). Gamma is 0:
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
ALGORITHMS = ("hierarchical", "hierarchical_pipelined")


def busbw(algorithm: str, nodes: int, nics: int, n: int, base) -> float:
    ranks = 8 * nodes
    res = simulate("allreduce", algorithm, ranks, n, replace(base, rails=nics))
    return n / res.time_s * 2 * (ranks - 1) / ranks / 1e9


def main():
    prof = load_profile("dgx-a100-hdr")
    n = 1 << 30
    base = topology_from_profile(prof, "switch")
    base = replace(base, intra=Network(base.intra.alpha_s, base.intra.beta_s_per_byte))  # no separate reduction
    print(f"# all-reduce of {n >> 20} MiB float32 on {prof.name}, one switch port per NIC; busbw in GB/s")
    print(f"{'cluster':>34} {'ranks':>6} {'hierarchical':>13} {'pipelined':>10} {'published':>10} {'error':>7}")
    for what, nodes, nics, published in CASES:
        plain, piped = (busbw(a, nodes, nics, n, base) for a in ALGORITHMS)
        error = f"{(piped / published - 1) * 100:+6.1f}%" if published else ""
        print(f"{what:>34} {8 * nodes:>6} {plain:>13.1f} {piped:>10.1f} {published or '':>10} {error:>7}")
    print("# error: pipelined against published. One after the other, NVLink's time and the NICs' add up (8 nodes: "
          "2(63/64) / (1.75/205 + 1.75/200) = 114 GB/s at most); overlapped, the slower of the two sets the pace. "
          "The 3-node row is NCCL's ring, which carries 2(P-1)/P of the buffer across every node boundary (bound: "
          "4 NICs x 25 = 100 GB/s); the hierarchical algorithms carry 2(N-1)/N, 1.44x less on 3 nodes")


if __name__ == "__main__":
    main()
