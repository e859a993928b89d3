"""Exercise 08.1 (lesson 08): one synchronous parameter-server round.

Rank 0 is the server and holds nothing to learn from; ranks 1..p-1 are
workers, each with its own gradient ``grad``. Every worker sends its
gradient to the server (``comm.Send`` / ``comm.Recv``); the server
averages the p - 1 gradients, takes one SGD step on ``params``
(params - lr * mean) and sends the new parameters back to every worker.
Every rank returns the new parameters.

The checker compares with the step one process takes on the mean of the
workers' gradients, on 3 and 5 ranks.
"""
import numpy as np


def ps_round(params, grad, comm, lr):
    """Return the new parameters on every rank (``grad`` on rank 0 is not a gradient: ignore it)."""
    p, r = comm.Get_size(), comm.Get_rank()
    if r == 0:
        total, incoming = np.zeros_like(params), np.empty_like(params)
        for worker in range(1, p):
            comm.Recv(incoming, source=worker)
            total += incoming
        new = params - lr * total / (p - 1)
        for worker in range(1, p):
            comm.Send(new, dest=worker)
        return new
    comm.Send(grad, dest=0)
    new = np.empty_like(params)
    comm.Recv(new, source=0)
    return new
