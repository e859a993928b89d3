"""Exercise 11.1 (lesson 11): a ZeRO-1 step.

ZeRO-1 keeps the optimizer state only for this rank's shard of the
parameters. ``params`` is the whole vector (the same on every rank),
``grad`` this rank's gradient (whole length, not yet averaged), and
``momentum`` this rank's shard of the momentum buffer: chunk r of
``chunk_offsets(n, p)``, possibly empty. One step of SGD with momentum:
1. average the gradients over the ranks; this rank needs only its chunk
   (``comm.Reduce_scatter`` with ``recvcounts`` = the chunk sizes sends
   half what an all-reduce does);
2. update its chunk: momentum = beta * momentum + g; w -= lr * momentum;
3. all-gather the updated chunks (``comm.Allgatherv``) so every rank has
   the whole ``params`` again.
Update ``params`` and ``momentum`` in place.

The checker runs several steps on 3 and 5 ranks, with lengths not
divisible by p and shorter than p, against one process's SGD.
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm.topology import chunk_offsets


def zero1_step(params, grad, momentum, comm, lr, beta):
    """One SGD-with-momentum step on this rank's shard, then every rank gets all of ``params``."""
    p, r = comm.Get_size(), comm.Get_rank()
    offs = chunk_offsets(params.size, p)
    counts = np.diff(offs)
    mine = np.empty(counts[r])
    comm.Reduce_scatter(grad, mine, recvcounts=counts, op=MPI.SUM)
    momentum *= beta
    momentum += mine / p
    shard = params[offs[r]:offs[r + 1]] - lr * momentum
    comm.Allgatherv(shard, [params, counts, offs[:-1], MPI.DOUBLE])
