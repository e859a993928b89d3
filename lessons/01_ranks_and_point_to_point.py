"""Lesson 01: ranks and point-to-point messages.

    mpiexec -n 4 python lessons/01_ranks_and_point_to_point.py

MPI starts the same program p times. Each copy is a *rank* with a number
0..p-1 (``comm.Get_rank()``) and knows how many there are
(``comm.Get_size()``). Ranks share no memory: the only way data gets from
one to another is a message. Everything in parallel_lm is built from three
calls on NumPy buffers (mpi4py's upper-case, buffer API, 10-17x faster
than the pickling lower-case one):

    comm.Send(buf, dest=r)              # blocks until buf may be reused
    comm.Recv(buf, source=r)            # blocks until buf holds the message
    comm.Sendrecv(out, dest=r, recvbuf=into, source=s)   # both at once

Part 1 passes a token around the ring 0 -> 1 -> ... -> p-1 -> 0: every
rank adds its number, so rank 0 gets back 0 + 1 + ... + (p-1). That is
p messages one after another: time grows with p. The lesson times the
trip (the median of 21) and divides by p: with a core per rank a hop
costs about the same whatever p is, so the trip grows with p.

Part 2 shifts a whole array one rank to the right with ``Sendrecv``: all p
messages fly at once, so the time does not grow with p (it is timed too). Why Sendrecv and
not Send then Recv? If every rank calls Send first and the messages are
large, every rank waits for a receiver that is itself stuck in Send:
deadlock. Sendrecv lets the library pair them up.

The lesson checks both results and exits non-zero if either is wrong.
"""
import numpy as np
from mpi4py import MPI

from parallel_lm.comm.topology import Ring
from parallel_lm.runtime import check, start_script, print0

start_script()  # an exception on one rank ends the job instead of hanging the others
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
ring = Ring(rank, p)
print0(f"{p} ranks; this is rank {rank}. Each rank's neighbours: left = rank - 1, right = rank + 1 (mod {p})")

# Part 1: a token travels the ring once, one hop at a time.
def token_trip() -> int:
    """Send the token once around the ring; rank 0 returns what came back, the others what they passed on."""
    token = np.zeros(1, dtype=np.int64)  # (1,) int64
    if p == 1:
        token[0] = rank
    elif rank == 0:
        token[0] = rank
        comm.Send(token, dest=ring.right)
        comm.Recv(token, source=ring.left)   # back after p hops
    else:
        comm.Recv(token, source=ring.left)
        token[0] += rank
        comm.Send(token, dest=ring.right)
    return int(token[0])


def median_us(run, repeats: int = 21) -> float:
    """Rank 0's median time of ``run()`` in microseconds, every repeat started together after a barrier."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = MPI.Wtime()
        run()
        times.append(MPI.Wtime() - t0)
    return float(np.median(times)) * 1e6


total = token_trip()
trip_us = median_us(token_trip)
if rank == 0:
    print0(f"part 1: the token came back to rank 0 holding {total} (expected 0 + 1 + ... + {p - 1} = {p * (p - 1) // 2})")
    print0(f"        one trip of {p} hop{'s' if p > 1 else ''}: {trip_us:.1f} us, {trip_us / p:.1f} us per hop "
           "(median of 21)")
    print0("        with a core per rank a hop costs the same for any p, so the trip grows with p; with more ranks "
           "than cores each hop also waits for its rank to be scheduled")
    check(total == p * (p - 1) // 2, f"token sum {total} != {p * (p - 1) // 2}")

# Part 2: every rank sends its array right and receives its left neighbour's, all at once.
mine = np.full(1 << 16, rank, dtype=np.float32)   # (65536,) float32, 256 KiB
from_left = np.empty_like(mine)
shift_us = median_us(lambda: comm.Sendrecv(mine, dest=ring.right, recvbuf=from_left, source=ring.left))
check(bool(np.all(from_left == ring.left)), f"rank {rank} received {from_left[0]}, expected {ring.left}")
print0(f"part 2: every rank got its left neighbour's 256 KiB in one Sendrecv: {shift_us:.0f} us on rank 0 "
       f"(median of 21), all {p} message{'s' if p > 1 else ''} at once")
print0("lesson 01 OK")

# Exercises
# 1. Run with -n 1, 2, 3, 8. Why does part 1 need the `p == 1` case?
# 2. Replace the Sendrecv in part 2 by comm.Send then comm.Recv on every rank.
#    With 256 KiB it may hang: find the size where it starts to (MPI's "eager"
#    limit) and explain why small messages get through.
# 3. Make the token go round twice. How does the time grow with p compared to part 2?
# Graded: python -m parallel_lm.exercises start 01.1, then check 01.1 (docs/course.md)
