"""Accelerators the predictor knows: peak FLOP/s, memory bandwidth and size, and how close kernels get.

A kernel's time is a roofline with two efficiencies (Williams, Waterman &
Patterson, "Roofline", CACM 2009):

    t = max(flops / (peak x gemm_efficiency) + gemm_overhead_s,
            bytes / (hbm_bytes_per_s x memory_efficiency))

- ``gemm_efficiency`` is what a large matrix multiplication sustains;
  ``gemm_overhead_s`` is a fixed cost per GEMM (launch, the ramp-up and
  the partly filled last wave of tiles), which is why small GEMMs run
  further from peak than large ones (NVIDIA, "Matrix Multiplication
  Background User's Guide", sections on tile and wave quantization);
- element-wise kernels (LayerNorm, softmax, GeLU, dropout, Adam) move
  bytes and do almost no math: they run at ``memory_efficiency`` of the
  HBM bandwidth.

Every number carries its source in ``sources``. The two efficiencies were
fitted once, for all rows together, to published training runs (see
docs/costmodel.md, "Published runs"); ``--device FILE.json`` takes a JSON
file with the same keys (and ``base``, the device it starts from) to
replace them for another machine or software stack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
GIB = 2 ** 30


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: dict  # precision -> dense FLOP/s
    hbm_bytes_per_s: float
    memory_bytes: float
    gemm_efficiency: float
    gemm_overhead_s: float
    memory_efficiency: float
    sources: dict = field(default_factory=dict, compare=False)

    def flops(self, precision: str) -> float:
        if precision not in self.peak_flops:
            raise ValueError(f"{self.name} has no {precision} peak; valid: {', '.join(self.peak_flops)}")
        return self.peak_flops[precision]

    def gemm_s(self, flops: float, n_bytes: float, precision: str) -> float:
        """One matrix multiplication: compute-bound at the sustained rate, or bound by its operands' bytes."""
        if flops <= 0:
            return 0.0
        compute = flops / (self.flops(precision) * self.gemm_efficiency) + self.gemm_overhead_s
        return max(compute, self.memory_s(n_bytes))

    def memory_s(self, n_bytes: float) -> float:
        """An element-wise kernel that reads and writes ``n_bytes`` in all."""
        return n_bytes / (self.hbm_bytes_per_s * self.memory_efficiency)


_FITTED = ("fitted: one value for every row of Megatron-LM's Table 1 (Narayanan et al. 2021) and Korthikanti "
           "et al. 2022's Table 5 together (benchmarks/published_runs.py --fit); see docs/costmodel.md")

DEVICES = {
    "a100-80gb": Device(
        "a100-80gb", {"fp16": 312e12, "bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}, 2.039e12, 80 * GIB,
        gemm_efficiency=0.74, gemm_overhead_s=5e-6, memory_efficiency=0.70,
        sources={
            "peak_flops": "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOP/s dense FP16/BF16 tensor core, "
                          "156 TF32, 19.5 FP32",
            "hbm_bytes_per_s": "NVIDIA A100 datasheet: A100 80GB SXM, 2,039 GB/s HBM2e",
            "memory_bytes": "NVIDIA A100 datasheet: 80 GB HBM2e (81,920 MiB as nvidia-smi reports it)",
            "gemm_efficiency": _FITTED, "memory_efficiency": _FITTED,
            "gemm_overhead_s": "assumption, not fitted: about the launch latency of one CUDA kernel (a few "
                               "microseconds); it only matters for GEMMs of a few GFLOP or less"}),
}
DEVICES["a100-40gb"] = replace(
    DEVICES["a100-80gb"], name="a100-40gb", hbm_bytes_per_s=1.555e12, memory_bytes=40 * GIB,
    sources={**DEVICES["a100-80gb"].sources,
             "hbm_bytes_per_s": "NVIDIA A100 datasheet: A100 40GB SXM, 1,555 GB/s HBM2",
             "memory_bytes": "NVIDIA A100 datasheet: 40 GB HBM2"})
DEVICES["h100-sxm"] = replace(
    DEVICES["a100-80gb"], name="h100-sxm", peak_flops={"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    hbm_bytes_per_s=3.35e12, memory_bytes=80 * GIB,
    sources={**DEVICES["a100-80gb"].sources,
             "peak_flops": "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 989 TFLOP/s dense FP16/BF16, 494 TF32, "
                           "67 FP32",
             "hbm_bytes_per_s": "NVIDIA H100 datasheet, H100 SXM: 3.35 TB/s HBM3",
             "memory_bytes": "NVIDIA H100 datasheet, H100 SXM: 80 GB",
             "gemm_efficiency": "assumption: the A100's fitted value; no published H100 run was fitted",
             "gemm_overhead_s": "assumption: the A100's value",
             "memory_efficiency": "assumption: the A100's fitted value"})
DEVICE_NAMES = sorted(DEVICES)


def load_device(spec: str) -> Device:
    """A known device by name, or a JSON file with Device's keys (missing ones taken from ``base``)."""
    if spec in DEVICES:
        return DEVICES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"no device {spec!r}: use one of {', '.join(DEVICE_NAMES)} or a JSON file")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"device file {path} is not valid JSON: {e}") from None
    base = DEVICES.get(d.pop("base", "a100-80gb"))
    if base is None:
        raise ValueError(f"device file {path}: 'base' must be one of {', '.join(DEVICE_NAMES)}")
    known = {f.name for f in fields(Device)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"device file {path}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    return replace(base, **d)
