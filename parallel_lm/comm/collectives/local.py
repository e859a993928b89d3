"""The local (gamma) part of every reduction: element-wise sum into a buffer."""
from __future__ import annotations

from ..buffers import array_module


def add_into(acc, incoming) -> None:
    """acc += incoming, in place, in acc's dtype (numpy or cupy).

    IEEE addition is commutative, so a + b and b + a are the same bits;
    what the algorithms fix is the grouping, which decides rounding.
    """
    array_module(acc).add(acc, incoming, out=acc)
