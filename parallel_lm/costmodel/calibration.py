"""Fitting alpha, beta and gamma to measured times (no MPI here; ``parallel_lm.calibrate`` measures).

``fit_line`` is weighted least squares of t = alpha + n.beta with weights
1/t^2, so every size counts by its relative error (a 1 us latency point
and a 10 ms bandwidth point pull equally) - the usual choice for
latency/bandwidth fits (Hockney's model fitted to ping-pong, as in the
OSU and Intel MPI Benchmarks literature). ``fit_piecewise`` allows one
break, where MPI switches protocol (eager to rendezvous) or a message
stops fitting in cache; it keeps the break only when it at least halves
the error. ``Piece`` ranges are [min_bytes, max_bytes).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    min_bytes: float
    max_bytes: float
    alpha_s: float
    beta_s_per_byte: float

    def time_s(self, n_bytes):
        return self.alpha_s + np.asarray(n_bytes, dtype=np.float64) * self.beta_s_per_byte


@dataclass(frozen=True)
class Fit:
    pieces: tuple[Piece, ...]
    sizes: tuple[float, ...]
    times_s: tuple[float, ...]

    def piece(self, n_bytes: float) -> Piece:
        for p in self.pieces:
            if n_bytes < p.max_bytes:
                return p
        return self.pieces[-1]

    def predict_s(self, n_bytes: float) -> float:
        return float(self.piece(n_bytes).time_s(n_bytes))

    @property
    def residuals(self) -> list[float]:
        """(predicted - measured) / measured for each measured size."""
        return [self.predict_s(n) / t - 1 for n, t in zip(self.sizes, self.times_s)]

    def to_json(self) -> dict:
        return {
            "pieces": [asdict(p) for p in self.pieces],
            "points": [{"bytes": n, "measured_s": t, "predicted_s": self.predict_s(n), "rel_residual": r}
                       for n, t, r in zip(self.sizes, self.times_s, self.residuals)],
            "median_abs_rel_residual": float(np.median(np.abs(self.residuals))),
        }


def fit_line(sizes, times_s) -> tuple[float, float, float]:
    """(alpha_s, beta_s_per_byte, weighted squared error) for t = alpha + n.beta, relative weights.

    Both coefficients are kept non-negative: a negative intercept means the
    points carry no latency information, and alpha is then 0.
    """
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if len(n) < 2 or np.any(t <= 0):
        raise ValueError("a line fit needs at least two sizes with positive times")
    w = 1.0 / t
    a = np.stack([w, n * w], axis=1)  # rows scaled by 1/t: residuals are relative
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    if alpha < 0 or beta < 0:
        if beta <= 0:  # flat: a pure latency
            alpha, beta = float(np.exp(np.mean(np.log(t)))), 0.0
        else:
            alpha, beta = 0.0, float(np.sum(n * w * w * t) / np.sum(n * n * w * w))
    err = float(np.sum(((alpha + beta * n) / t - 1) ** 2))
    return float(alpha), float(beta), err


def latency_and_bandwidth(sizes, times_s, short_bytes: int = 4096, long_bytes: int = 64 << 10) -> tuple[float, float]:
    """(alpha_s, beta_s_per_byte), each from the sizes that show it: robust on a busy machine.

    beta is the relative-weighted slope through the sizes >= ``long_bytes``;
    alpha is the median, over the sizes <= ``short_bytes``, of t - n.beta.
    One least-squares line through 64 B..16 MiB lets a few noisy points
    decide both numbers: on a loaded 2-core machine it returned alpha 0 and
    a beta 100x too high. Falls back to all sizes where a range is empty.
    """
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    long = n >= long_bytes if np.count_nonzero(n >= long_bytes) >= 2 else np.ones(n.size, bool)
    beta = fit_line(n[long], t[long])[1]
    short = n <= short_bytes if np.any(n <= short_bytes) else n == n.min()
    return max(0.0, float(np.median(t[short] - beta * n[short]))), beta


def fit_piecewise(sizes, times_s, min_points: int = 3) -> Fit:
    """One line, or two lines with a break between measured sizes when that halves the error."""
    order = np.argsort(sizes)
    n = np.asarray(sizes, dtype=np.float64)[order]
    t = np.asarray(times_s, dtype=np.float64)[order]
    alpha, beta, best = fit_line(n, t)
    pieces = (Piece(0.0, float("inf"), alpha, beta),)
    single = best
    if single <= 1e-6 * len(n):  # already within 0.1% everywhere: nothing for a break to explain
        return Fit(pieces, tuple(float(x) for x in n), tuple(float(x) for x in t))
    for k in range(min_points, len(n) - min_points + 1):
        a1, b1, e1 = fit_line(n[:k], t[:k])
        a2, b2, e2 = fit_line(n[k:], t[k:])
        if e1 + e2 < best and e1 + e2 < 0.5 * single:
            best = e1 + e2
            split = float(np.sqrt(n[k - 1] * n[k]))  # geometric middle of the gap
            pieces = (Piece(0.0, split, a1, b1), Piece(split, float("inf"), a2, b2))
    return Fit(pieces, tuple(float(x) for x in n), tuple(float(x) for x in t))


def fit_gamma(sizes, times_s) -> float:
    """Seconds per byte of local reduction: the slope of a relative-weighted line through the points."""
    return fit_line(sizes, times_s)[1]
