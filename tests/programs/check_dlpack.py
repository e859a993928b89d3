"""Run under ``mpiexec -n K``: the collectives on other frameworks' tensors through DLPack, against NumPy.

Reports one case per kind of tensor (report.py): ``torch`` (written in place, zero-copy: the same tensor and
the same memory come back) and ``read-only`` (a DLPack producer NumPy may not write, as JAX's and TensorFlow's
arrays are; here also starting off a 64-byte boundary: its values are staged through an aligned copy and a new
array comes back, the input untouched) and ``jax`` (immutable: a new jax.Array comes back, the input
untouched). Each over allreduce, allreduce_mean, reduce_scatter, all_gather and broadcast, bitwise equal to
the same call on a NumPy copy.
"""
import numpy as np
import torch
from mpi4py import MPI
from report import case

from parallel_lm.comm import all_gather, allreduce, allreduce_mean, broadcast, reduce_scatter
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
OPS = {"allreduce": allreduce, "allreduce_mean": allreduce_mean, "reduce_scatter": reduce_scatter,
       "all_gather": all_gather, "broadcast": broadcast}


class ReadOnly:
    """A tensor NumPy sees read-only through DLPack, at a byte offset off any 64-byte boundary."""

    def __init__(self, values: np.ndarray):
        raw = np.empty(values.nbytes + 64 + 4, np.uint8)
        start = (-raw.ctypes.data % 64) + 4  # deliberately misaligned
        self.array = raw[start:start + values.nbytes].view(values.dtype)
        self.array[...] = values
        self.array.flags.writeable = False

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def data(n, seed):
    return np.random.default_rng(seed * 100 + rank).uniform(-1, 1, n).astype(np.float32)


import jax.numpy as jnp  # noqa: E402

for kind in ("torch", "read-only", "jax"):
    wrong = []
    for name, op in OPS.items():
        for n in (1, 7, 1001):
            values = data(n, n)
            want = op(values.copy(), comm)
            if kind == "torch":
                t = torch.from_numpy(values.copy())
                ptr = t.data_ptr()
                got = op(t, comm)
                ok = isinstance(got, torch.Tensor) and t.data_ptr() == ptr and np.array_equal(got.numpy(), want)
                ok = ok and (got is t or name == "reduce_scatter")
            elif kind == "jax":
                x = jnp.asarray(values)
                got = op(x, comm)
                ok = type(got) is type(x) and np.array_equal(np.asarray(got), want)
                ok = ok and np.array_equal(np.asarray(x), values)
            else:
                src = ReadOnly(values)
                got = op(src, comm)
                ok = isinstance(got, np.ndarray) and np.array_equal(got, want) and np.array_equal(src.array, values)
            if not ok:
                wrong.append(f"{name} n={n}")
    wrong = comm.allgather(wrong)
    bad = [w for ws in wrong for w in ws]
    if rank == 0:
        case(kind, not bad, f"{kind}: " + (f"differs at {bad[:4]}" if bad else
                                           "5 collectives x 3 lengths bitwise as on NumPy"), wrong=bad)
