"""Exercise 04.1 (lesson 04): recursive doubling on any number of ranks.

Recursive doubling exchanges whole buffers with partner ``r ^ mask`` for
mask = 1, 2, 4, ...: lg p steps, but only when p is a power of two. On
any p, fold first: with pof2 the largest power of two <= p and
rem = p - pof2, each even rank r < 2*rem sends its buffer to r + 1 and
sits out; the odd ones add it. Now pof2 ranks remain: number them
v = r // 2 (r < 2*rem) or r - rem, run recursive doubling on v, and
finally each odd r < 2*rem sends the result back to r - 1.

The checker compares with MPI_Allreduce on 3 and 6 ranks and counts each
rank's messages and bytes: at most lg(pof2) + 1 of each buffer.
"""
import numpy as np


def recursive_doubling_allreduce(buf, comm):
    """Sum the 1-D NumPy array ``buf`` over all ranks, in place, and return it."""
    p, r = comm.Get_size(), comm.Get_rank()
    pof2 = 1 << (p.bit_length() - 1)
    rem = p - pof2
    incoming = np.empty_like(buf)
    if r < 2 * rem and r % 2 == 0:
        comm.Send(buf, dest=r + 1)
        v = -1  # sits out
    elif r < 2 * rem:
        comm.Recv(incoming, source=r - 1)
        buf += incoming
        v = r // 2
    else:
        v = r - rem
    mask = 1
    while v >= 0 and mask < pof2:
        pv = v ^ mask
        partner = 2 * pv + 1 if pv < rem else pv + rem
        comm.Sendrecv(buf, dest=partner, recvbuf=incoming, source=partner)
        buf += incoming
        mask <<= 1
    if r < 2 * rem:
        if r % 2:
            comm.Send(buf, dest=r - 1)
        else:
            comm.Recv(buf, source=r + 1)
    return buf
