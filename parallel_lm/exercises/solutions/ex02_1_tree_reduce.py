"""Exercise 02.1 (lesson 02): a binomial-tree reduce onto any root.

Sum every rank's ``buf`` onto rank ``root``. Number the ranks relative to
the root, v = (r - root) % p. In round k (mask = 2^k) a rank whose bit k
is set sends what it has summed so far to v - mask and is done; the others
receive from v + mask, if that rank exists, and add. After ceil(lg p)
rounds the root holds the sum, and it received only ceil(lg p) messages:
the naive reduce makes it receive p - 1.

The checker compares the root's result with ``comm.Reduce`` and counts the
messages the root receives against ceil(lg p).
"""
import numpy as np


def tree_reduce(buf, comm, root=0):
    """Return the element-wise sum of every rank's ``buf`` on ``root``, and None on the other ranks. Leave ``buf`` as it is."""
    p, r = comm.Get_size(), comm.Get_rank()
    v = (r - root) % p
    acc, incoming = buf.copy(), np.empty_like(buf)
    mask = 1
    while mask < p:
        if v & mask:
            comm.Send(acc, dest=(v - mask + root) % p)
            return None
        if v + mask < p:
            comm.Recv(incoming, source=(v + mask + root) % p)
            acc += incoming
        mask <<= 1
    return acc
