"""Lesson 03: the ring all-reduce, step by step.

    mpiexec -n 4 python lessons/03_ring_allreduce.py [ELEMENTS]     (default 2 per rank)

Cut each rank's vector into p chunks. Two phases, p - 1 steps each, and on
every step *every* rank sends one chunk to its right neighbour and
receives one from its left (``Ring.reduce_scatter_chunks(step)`` says
which):

1. reduce-scatter: the received chunk is *added* to the local one. After
   p - 1 steps rank r holds the complete sum of chunk r.
2. all-gather: the finished chunks travel on around the ring and are
   *copied*, until every rank has every chunk.

Each rank sends 2(p-1) messages of n/p bytes, 2(p-1)/p.n bytes in all,
the least any all-reduce can send per rank, and all links work at once:

    ring: 2(p-1).alpha + 2(p-1)/p.n.beta + (p-1)/p.n.gamma

To *see* the chunks move, rank r contributes 2^r to every element, so a
sum written in binary tells which ranks it contains: {0,2} means ranks 0
and 2 have been added in. The table after each step shows what each rank
holds; ``PARALLEL_LM_TRACE=1`` prints every message as well.

The code below is the same loop as ``parallel_lm/comm/collectives/ring.py``
with printing added; at the end the lesson checks its result against the
library's MPI_Allreduce and against ``allreduce(..., algorithm="ring")``.
"""
import sys

import numpy as np
from mpi4py import MPI

from parallel_lm.comm import allreduce, chunk_offsets
from parallel_lm.comm.topology import Ring
from parallel_lm.runtime import check, start_script, print0

start_script()
comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
ring = Ring(rank, p)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2 * p  # elements; fewer than p leaves chunks empty (exercise 2)
offs = chunk_offsets(n, p)
buf = np.full(n, 2 ** rank, dtype=np.int64)  # (n,) int64: this rank's bit in every element
original = buf.copy()


def ranks_in(chunk) -> str:
    """The ranks summed into ``chunk`` (its elements all agree), or "-" for an empty chunk."""
    if len(chunk) == 0:
        return "-"
    return "{" + ",".join(str(r) for r in range(p) if int(chunk[0]) >> r & 1) + "}"


def show(title: str, moves: str) -> None:
    """Gather every rank's chunks and its move of this step to rank 0 and print one table."""
    rows = comm.gather((moves, [ranks_in(buf[offs[c]:offs[c + 1]]) for c in range(p)]), root=0)
    width = max(8, 2 * p + 2)
    print0(f"\n{title}\n{'rank':>4}  {'moves':<24}" + "".join(f"{'chunk ' + str(c):>{width}}" for c in range(p)))
    for r, (mv, chunks) in enumerate(rows or []):
        print0(f"{r:>4}  {mv:<24}" + "".join(f"{c:>{width}}" for c in chunks))


print0(f"ring all-reduce on {p} ranks, {n} elements cut into {p} chunks; each cell lists the ranks summed into it")
show("start: every rank holds only itself", "")

incoming = np.empty(offs[1] - offs[0], dtype=buf.dtype)  # (ceil(n/p),) receive buffer
for step in range(p - 1):
    send, recv = ring.reduce_scatter_chunks(step)
    into = incoming[: offs[recv + 1] - offs[recv]]
    comm.Sendrecv(buf[offs[send]:offs[send + 1]], dest=ring.right, recvbuf=into, source=ring.left)
    buf[offs[recv]:offs[recv + 1]] += into
    show(f"reduce-scatter step {step + 1}/{p - 1}", f"c{send}->r{ring.right}, c{recv}<-r{ring.left} (+)")

mine = buf[offs[rank]:offs[rank + 1]]
check(bool(np.all(mine == 2 ** p - 1)), f"after reduce-scatter rank {rank}'s chunk is {ranks_in(mine)}")
print0(f"\nafter reduce-scatter rank r holds the full sum {ranks_in([2 ** p - 1])} of chunk r")

for step in range(p - 1):
    send, recv = ring.all_gather_chunks(step)
    comm.Sendrecv(buf[offs[send]:offs[send + 1]], dest=ring.right,
                  recvbuf=buf[offs[recv]:offs[recv + 1]], source=ring.left)
    show(f"all-gather step {step + 1}/{p - 1}", f"c{send}->r{ring.right}, c{recv}<-r{ring.left} (copy)")

library = original.copy()
comm.Allreduce(MPI.IN_PLACE, library, op=MPI.SUM)
check(np.array_equal(buf, library), "ring result differs from MPI_Allreduce")
packaged = allreduce(original.copy(), comm, algorithm="ring")
check(np.array_equal(packaged, library), "parallel_lm's ring differs from MPI_Allreduce")
print0(f"\n{2 * (p - 1)} steps, {2 * (p - 1)} messages of at most {offs[1] - offs[0]} elements per rank; "
       "result equals MPI_Allreduce and parallel_lm's ring")
print0("lesson 03 OK")

# Exercises
# 1. Run with -n 3 and -n 5 (not powers of two): nothing in the ring cares. Why not?
# 2. Run with fewer elements than ranks (mpiexec -n 4 ... 03_ring_allreduce.py 3): one chunk is
#    empty. Does the table still end full? And with 7, where chunks differ in length?
# 3. With PARALLEL_LM_TRACE=1, count the messages per rank for p = 8 and compare with
#    lesson 02's tree. Which sends fewer bytes per rank for a 64 MiB vector?
# 4. The ring sends 2(p-1) messages. For a 4 KiB vector on 8 ranks, is that a good
#    idea? Predict with alpha = 20 us, then measure with lesson 04.
# Graded: python -m parallel_lm.exercises start 03.1, then check 03.1 (docs/course.md)
