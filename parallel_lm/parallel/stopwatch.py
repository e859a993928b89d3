"""The communication seconds a step's parts spend, by kind, handed to the trainer through one object.

The trainer makes one ``StepClock`` and passes it to the parts that time their own communication (tensor
parallelism, context parallelism, expert parallelism); each times its communication under its kind, and the
trainer ``start``s the clock before a step and reads each kind's ``seconds`` for the step's record. One channel, passed in
explicitly, instead of reading and resetting an attribute on each part.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class StepClock:
    def __init__(self):
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def timing(self, kind: str):
        """Add the seconds the ``with`` block takes under ``kind``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[kind] += time.perf_counter() - t0

    def start(self) -> None:
        """Forget what was timed before the step (an evaluation's forward passes, say)."""
        self._seconds.clear()

    def seconds(self, kind: str) -> float:
        """The seconds timed under ``kind`` since ``start``."""
        return self._seconds.get(kind, 0.0)
