"""Exercise 05.1 (lesson 05): fit alpha and beta to timings.

``times[i]`` is the measured time of a message of ``sizes[i]`` bytes; the
model is t = alpha + beta * n. The sizes span six decades (8 B to 64 MiB),
and each time is off by a few percent of itself. A plain least-squares fit
(``np.polyfit``) minimises absolute errors, so the long messages, whose
errors are a million times larger, decide everything and alpha comes out
as noise: often negative, or 0.00 us once clipped. Weight each point by
1/t (minimise relative errors) and keep both numbers non-negative: if one
comes out negative, set it to 0 and fit the other alone.

The checker draws alpha and beta you have not seen, adds noise, and wants
both back within 25%.
"""
import numpy as np


def fit_alpha_beta(sizes, times):
    """Return (alpha seconds, beta seconds per byte), both >= 0, from 1-D arrays of sizes and times."""
    n, t = np.asarray(sizes, dtype=float), np.asarray(times, dtype=float)
    w = 1.0 / t  # each row divided by its own time: relative errors
    (alpha, beta), *_ = np.linalg.lstsq(np.column_stack([w, n * w]), np.ones_like(t), rcond=None)
    if alpha < 0:  # through the origin: t = beta * n
        alpha, beta = 0.0, float(np.mean(t / n)) if np.all(n > 0) else 0.0
    if beta < 0:  # latency only
        alpha, beta = float(len(t) / np.sum(1.0 / t)), 0.0
    return float(alpha), float(beta)
