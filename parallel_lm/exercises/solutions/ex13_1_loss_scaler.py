"""Exercise 13.1 (lesson 13): a dynamic loss scaler the ranks agree on.

fp16 gradients overflow (inf) when the scale is too high and underflow
(0) when it is too low. ``step(grads, comm)`` runs after the backward of a
loss multiplied by ``self.scale``:
- if any gradient on *any* rank holds an inf or nan, every rank skips
  the step (return False), the scale is multiplied by ``backoff`` and the
  count of good steps starts again from 0; the ranks must agree, or they
  fall out of step (one ``comm.Allreduce`` of a flag, op=MPI.MAX);
- otherwise divide every gradient by the scale, count one good step, and
  after ``growth_interval`` good steps in a row multiply the scale by
  ``growth`` and start counting again; return True.
This is the rule of ``torch.amp.GradScaler``, and the checker compares
your scale, step by step, with torch's own update on random overflows.
"""
import numpy as np
from mpi4py import MPI


class LossScaler:
    def __init__(self, scale=2.0 ** 16, growth=2.0, backoff=0.5, growth_interval=2000):
        """Keep the four settings; no good steps counted yet."""
        self.scale, self.growth, self.backoff, self.growth_interval = scale, growth, backoff, growth_interval
        self.good_steps = 0

    def step(self, grads, comm):
        """Unscale ``grads`` (a list of NumPy arrays) in place and return True, or return False to skip."""
        bad = np.array([0 if all(np.isfinite(g).all() for g in grads) else 1], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.MAX)
        if bad[0]:
            self.scale *= self.backoff
            self.good_steps = 0
            return False
        for g in grads:
            g /= self.scale
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth
            self.good_steps = 0
        return True
