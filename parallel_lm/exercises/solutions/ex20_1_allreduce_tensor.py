"""Exercise 20.1 (lesson 20): sum any framework's tensor over the ranks, through DLPack.

``tensor`` is a 1-D CPU tensor that exports DLPack: a torch tensor or a JAX array. Sum it over the ranks
with the library's ``comm.Allreduce``:
- where NumPy may write its memory (torch), work in place on ``np.from_dlpack(tensor)``, a view that copies
  nothing, and return the tensor itself;
- where it may not (a JAX array is immutable: NumPy sees it read-only), reduce a copy and return a new
  array of the tensor's own framework (its array namespace's ``from_dlpack``), leaving the input as it was.

Checked on torch tensors (the same object and the same memory must come back) and on JAX arrays (a new
jax.Array, the input untouched), float32 and float64, against MPI_Allreduce bitwise.
"""
import numpy as np
from mpi4py import MPI


def allreduce_tensor(tensor, comm):
    """The sum of ``tensor`` over the ranks: ``tensor`` itself (torch), or a new array of its framework (JAX)."""
    view = np.from_dlpack(tensor)
    if view.flags.writeable:
        comm.Allreduce(MPI.IN_PLACE, view, op=MPI.SUM)
        return tensor
    out = view.copy()
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
    return tensor.__array_namespace__().from_dlpack(out)
