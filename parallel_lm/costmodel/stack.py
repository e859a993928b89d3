"""Calibration from measurement: how much slower (or faster) a software stack runs than the model's defaults.

The device and network figures in profiles and devices.py are fitted to Megatron-LM's runs. Another stack
(another framework, kernel library or communication library) on the same hardware computes and communicates
at other efficiencies. Given the measured step time of the same model and layout at one GPU count or more,
``fit`` finds two factors:

- ``compute``: every kernel takes this many times the model's time (the GEMM efficiency and the memory
  efficiency divided by it, the fixed cost per GEMM multiplied);
- ``network``: every message takes this many times the model's time (alpha and beta of both levels
  multiplied).

One measurement fixes ``compute`` alone (``network`` stays 1): the step is mostly compute, and one number
cannot tell the two apart. Two or more measurements at different GPU counts, where communication weighs
differently, fix both (least squares on the relative error when there are more than two). ``apply`` gives
the calibrated cluster, from which ``step.predict_run`` predicts every other count with the overlap rules
intact (a slower network exposes more of the gradient sync behind the same backward).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from .formulas import Network
from .layout import Cluster

LOW, HIGH = 1 / 16, 16.0  # factors searched between these


@dataclass(frozen=True)
class StackFactors:
    compute: float = 1.0
    network: float = 1.0

    def describe(self) -> str:
        return f"compute x{self.compute:.3f}, network x{self.network:.3f}"


def parse_measurements(text: str) -> list[tuple[float, int]]:
    """``STEP_S@GPUS[,STEP_S@GPUS...]`` -> [(step seconds, GPUs)]; ValueError naming the bad part."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        step, _, gpus = part.partition("@")
        try:
            out.append((float(step), int(gpus)))
        except ValueError:
            raise ValueError(f"{part!r}: give STEP_S@GPUS, the measured seconds of one step at that many GPUs "
                             "(for example 60.1@2240)") from None
        if out[-1][0] <= 0 or out[-1][1] < 1:
            raise ValueError(f"{part!r}: the step time must be > 0 and the GPU count >= 1")
    if len({g for _, g in out}) != len(out):
        raise ValueError(f"{text!r}: one measurement per GPU count")
    return out


def parse_factors(text: str) -> StackFactors:
    """``compute=X,network=Y`` (either may be left out: 1) -> StackFactors; ValueError naming the bad part."""
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = -1.0
        if key not in ("compute", "network") or values[key] <= 0:
            raise ValueError(f"{part!r}: give compute=X,network=Y, each a positive factor (train --predict prints "
                             "them for a run)")
    return StackFactors(**values)


def apply(cluster: Cluster, factors: StackFactors) -> Cluster:
    """``cluster`` with its device and networks slowed (or sped up) by ``factors``."""
    dev = cluster.device
    device = replace(dev, gemm_efficiency=dev.gemm_efficiency / factors.compute,
                     memory_efficiency=dev.memory_efficiency / factors.compute,
                     gemm_overhead_s=dev.gemm_overhead_s * factors.compute)
    slow = lambda n: Network(n.alpha_s * factors.network, n.beta_s_per_byte * factors.network, n.gamma_s_per_byte)
    return replace(cluster, device=device, intra=slow(cluster.intra), inter=slow(cluster.inter))


def _feasible(f: Callable[[float], float], x: float) -> bool:
    try:
        f(x)
        return True
    except ValueError:
        return False


def _solve(f: Callable[[float], float], target: float, lo: float = LOW, hi: float = HIGH) -> float:
    """x in [lo, hi] with f(x) = target, f increasing; ValueError when the target lies outside."""
    if not f(lo) <= target <= f(hi):
        raise ValueError
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo * hi) ** 0.5


def fit(step_s: Callable[[int, StackFactors], float], measured: list[tuple[float, int]]) -> StackFactors:
    """The factors under which ``step_s(gpus, factors)`` (the model's step) meets the measurements."""
    first_s, first_gpus = measured[0]
    try:
        if len(measured) == 1:
            return StackFactors(_solve(lambda c: step_s(first_gpus, StackFactors(c, 1.0)), first_s))

        def compute_for(network: float) -> float:  # the compute factor that meets the first measurement exactly
            return _solve(lambda c: step_s(first_gpus, StackFactors(c, network)), first_s)

        def misfit(network: float) -> float:  # the others' relative errors, signed by the most communication-bound
            c = compute_for(network)
            errors = [step_s(g, StackFactors(c, network)) / s - 1 for s, g in measured[1:]]
            return sum(errors) / len(errors)

        low, high = LOW, HIGH
        while high > low and not _feasible(compute_for, high):  # so slow a network leaves no time to compute
            high /= 1.25
        # more network time raises the error at the counts that communicate more than the first does
        increasing = misfit(high) > misfit(low)
        network = _solve(lambda n: misfit(n) if increasing else -misfit(n), 0.0, low, high)
        return StackFactors(compute_for(network), network)
    except ValueError:
        why = ("check that it is of this model and layout, in seconds per optimizer step" if len(measured) == 1 else
               "either they are not all of this model and layout, or communication weighs too alike at these "
               "GPU counts to tell it from compute (calibrate with one of them)")
        raise ValueError(f"no compute factor and network factor in [{LOW:g}, {HIGH:g}] meet "
                         f"{', '.join(f'{s:g} s at {g} GPUs' for s, g in measured)}: {why}") from None
