"""Exercise 10.1 (lesson 10): a pipeline's forward pass.

Rank r holds stage r of the model (``stage``, a function of one array).
Rank 0 has the micro-batches (a list of m arrays, all of ``shape``); the
other ranks get a list of m Nones. For each micro-batch in order: rank 0
applies its stage and sends the result to rank 1; every middle rank
receives from r - 1, applies its stage and sends to r + 1; the last rank
receives, applies its stage and keeps the output. Every activation has
``shape`` (the stages keep it), so receivers know what to allocate.

The checker compares the last rank's outputs with one process applying
every stage in turn, and counts messages: exactly m per rank but the last.
"""
import numpy as np


def pipeline_forward(micro_batches, stage, shape, comm):
    """Return the list of m outputs on the last rank, and None on the others."""
    p, r = comm.Get_size(), comm.Get_rank()
    outputs = []
    for x in micro_batches:
        if r > 0:
            x = np.empty(shape)
            comm.Recv(x, source=r - 1)
        y = stage(x)
        if r < p - 1:
            comm.Send(np.ascontiguousarray(y), dest=r + 1)
        else:
            outputs.append(y)
    return outputs if r == p - 1 else None
