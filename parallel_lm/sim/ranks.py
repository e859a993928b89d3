"""Running one algorithm call for a whole group of virtual ranks.

``comm.Get_rank()`` on a group returns a ``RankVector``: a NumPy array of
the group's ranks that behaves like one rank number. Arithmetic works
element-wise, so ``(rank + 1) % p`` gives every rank its right
neighbour and a ring step records one message per rank in a single
Python call. When the code branches on a rank-dependent value
(``if vrank & mask:``, ``range(n_for_this_rank)``) and the group
disagrees, the value raises ``Diverge`` with each rank's answer; the
runner then re-runs the call once per distinct answer with the smaller
groups. The algorithm's own code never changes: a ring all-reduce on
4,096 ranks runs its loop once for all of them; a binomial tree splits
into groups that take the same path.
"""
from __future__ import annotations

import numpy as np


class Diverge(Exception):
    """Raised when ranks of a group disagree on a branch; ``keys`` holds each rank's answer."""

    def __init__(self, keys: np.ndarray):
        super().__init__("ranks of a simulated group took different branches")
        self.keys = keys


class RankVector(np.ndarray):
    """One value per rank of a group, used where the code expects one int."""

    def __new__(cls, values):
        return np.asarray(values, dtype=np.int64).view(cls)

    def _uniform(self):
        flat = self.view(np.ndarray).ravel()
        if flat.size and (flat == flat[0]).all():
            return flat[0]
        raise Diverge(flat.copy())

    def __bool__(self):
        return bool(self._uniform())

    def __index__(self):
        return int(self._uniform())

    __int__ = __index__

    def __float__(self):
        return float(self._uniform())

    def __hash__(self):
        return hash(int(self._uniform()))
