"""Checkers of the exercises on collectives: results against the MPI library, messages against the formula."""
from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from ..comm.trace import CountingComm
from .verdicts import at_most, every_rank, exactly, first, in_place, mismatch, unchanged


def _lengths(rng, p: int) -> list[int]:
    """Empty, fewer elements than ranks, not divisible by p, and long."""
    return [0, p - 1, p * int(rng.integers(3, 9)) + 1, int(rng.integers(5000, 9000))]


def check_pass_right(module, comm, rng):
    """Each rank ends with its left neighbour's array, bitwise, for 0, 7 and 2**17 elements; sends are synchronous,
    so every rank sending before it receives is a deadlock on every size."""
    p, r = comm.Get_size(), comm.Get_rank()
    for n in [0, 7, 1 << 17]:  # 1 MiB: no MPI buffers it, so Send-then-Recv on every rank hangs
        data = every_rank(rng, p, n)
        got = module.pass_right(data[r].copy(), comm)
        yield f"{n} elements", mismatch(got, data[(r - 1) % p], f"rank {r} should hold rank {(r - 1) % p}'s array")


def check_tree_reduce(module, comm, rng):
    """The sum on any root equals MPI_Reduce's bitwise; the root receives at most ceil(lg p) messages; every
    rank's ``buf`` is left as it was."""
    p, r = comm.Get_size(), comm.Get_rank()
    for root in sorted({0, p - 1, 1 % p}):
        n = int(rng.integers(1, 50))
        data = every_rank(rng, p, n)
        counting = CountingComm(comm)
        mine = data[r].copy()
        got = module.tree_reduce(mine, counting, root=root)
        library = np.empty(n) if r == root else None
        comm.Reduce(data[r], library, op=MPI.SUM, root=root)
        failure = unchanged(mine, data[r], "buf")
        if r == root:
            failure = first(failure, mismatch(got, library, f"the sum on root {root} (MPI_Reduce's)"),
                            at_most(counting.received, math.ceil(math.log2(p)), f"messages root {root} received",
                                    "ceil(lg p)"))
        yield f"root {root}, {n} elements", failure


def check_ring_allreduce(module, comm, rng):
    """The sum equals MPI_Allreduce's bitwise, in the caller's array (in place), for lengths 0, < p, not divisible
    by p and long, with values float32 cannot hold; exactly 2(p-1) messages and at most 2(p-1) chunks' bytes."""
    p, r = comm.Get_size(), comm.Get_rank()
    for n in _lengths(rng, p):
        data = every_rank(rng, p, n)
        counting = CountingComm(comm)
        mine = data[r].copy()
        got = module.ring_allreduce(mine, counting)
        library = data[r].copy()
        comm.Allreduce(MPI.IN_PLACE, library, op=MPI.SUM)
        chunk = math.ceil(n / p) * 8
        yield f"{n} elements", first(
            mismatch(got, library, "the sum (MPI_Allreduce's)"),
            in_place(mine, library, "buf"),
            # with n < p some chunks are empty, and a ring may skip those messages on both sides
            exactly(counting.sent, 2 * (p - 1), "messages sent", "2(p-1)") if n >= p else
            at_most(counting.sent, 2 * (p - 1), "messages sent", "2(p-1)"),
            at_most(counting.bytes_sent, 2 * (p - 1) * chunk, "bytes sent", "2(p-1) chunks of ceil(n/p)"))


def check_recursive_doubling(module, comm, rng):
    """The sum equals MPI_Allreduce's bitwise, in place, on p that is not a power of two; at most lg(pof2) + 1
    messages of one buffer each."""
    p, r = comm.Get_size(), comm.Get_rank()
    steps = (p.bit_length() - 1) + (1 if p & (p - 1) else 0)
    for n in [1, int(rng.integers(10, 100)), 4096]:
        data = every_rank(rng, p, n)
        counting = CountingComm(comm)
        mine = data[r].copy()
        got = module.recursive_doubling_allreduce(mine, counting)
        library = data[r].copy()
        comm.Allreduce(MPI.IN_PLACE, library, op=MPI.SUM)
        yield f"{n} elements", first(
            mismatch(got, library, "the sum (MPI_Allreduce's)"),
            in_place(mine, library, "buf"),
            at_most(counting.sent, steps, "messages sent", "lg(pof2) + 1 on p that is not a power of two"),
            at_most(counting.bytes_sent, steps * n * 8, "bytes sent", "one buffer per message"))


def greedy_buckets(sizes: list[int], cap: int) -> int:
    count, filled = 0, None
    for s in sizes:
        if filled is None or filled + s > cap:
            count, filled = count + 1, 0
        filled += s
    return count


def check_bucketed_allreduce(module, comm, rng):
    """Every gradient ends as the exact sum, in place; the number of all-reduce calls equals the buckets of the
    greedy packing under each cap (1 byte to 1 MiB)."""
    p, r = comm.Get_size(), comm.Get_rank()
    for cap in [1, 200, 800, 1 << 20]:
        lengths = [int(x) for x in rng.integers(1, 60, int(rng.integers(5, 12)))]
        data = [every_rank(rng, p, n) for n in lengths]
        grads = [d[r].copy() for d in data]
        counting = CountingComm(comm)
        module.bucketed_allreduce(grads, counting, cap)
        want = greedy_buckets([8 * n for n in lengths], cap)
        failure = first(*(mismatch(g, np.sum(d, axis=0), f"gradient {i}'s sum") for i, (g, d) in enumerate(zip(grads, data))))
        calls = counting.collective_calls("Allreduce", "allreduce", "Iallreduce")
        yield f"{len(lengths)} gradients of {sum(lengths) * 8} bytes, cap {cap} bytes", first(
            failure, exactly(calls, want, "all-reduce calls", "one per bucket of the greedy packing"))


def check_ps_round(module, comm, rng):
    """Every rank's new parameters equal one SGD step on the workers' mean gradient (rank 0, the server, sends
    none), to 1e-12."""
    p, r = comm.Get_size(), comm.Get_rank()
    for n in [1, int(rng.integers(10, 200))]:
        params = rng.standard_normal(n)
        grads = [rng.standard_normal(n) for _ in range(p)]
        lr = float(rng.uniform(0.05, 0.5))
        got = module.ps_round(params.copy(), grads[r].copy(), comm, lr)
        want = params - lr * np.mean(grads[1:], axis=0)
        yield f"{n} parameters, {p - 1} workers", mismatch(got, want, "new parameters (one step on the workers' mean)",
                                                           rtol=1e-12, atol=1e-12)


def check_all_to_all(module, comm, rng):
    """The received blocks equal MPI_Alltoall's bitwise, for blocks of 0, 1 and many elements; sends are
    synchronous, so sending every block before receiving any is a deadlock; ``send`` is left as it was; at most
    p - 1 messages."""
    p, r = comm.Get_size(), comm.Get_rank()
    for b in [0, 1, int(rng.integers(100, 3000))]:
        send = rng.standard_normal(p * b) + r
        counting = CountingComm(comm)
        mine = send.copy()
        got = module.all_to_all(mine, counting)
        library = np.empty_like(send)
        comm.Alltoall(send, library)
        yield f"blocks of {b} elements", first(mismatch(got, library, "the received blocks (MPI_Alltoall's)"),
                                                unchanged(mine, send, "send buffer"),
                                                at_most(counting.sent, p - 1, "messages sent", "p - 1"))


def check_hierarchical_allreduce(module, comm, rng):
    """The sum equals MPI_Allreduce's bitwise, in place, for every node size that divides p; and only each node's
    leader (local rank 0) moves data between nodes: every send and every collective is checked against the node
    map, on the learner's own sub-communicators too."""
    p, r = comm.Get_size(), comm.Get_rank()
    for local in [d for d in range(2, p) if p % d == 0]:
        node = r // local
        for n in [int(rng.integers(1, 20)), 3000]:
            data = every_rank(rng, p, n)
            learner = comm.fresh(node_of=lambda w, local=local: w // local)
            mine = data[r].copy()
            got = module.hierarchical_allreduce(mine, learner, local)
            library = data[r].copy()
            comm.Allreduce(MPI.IN_PLACE, library, op=MPI.SUM)
            crossed = None
            if learner.ledger.crossings and r % local:
                crossed = (f"rank {r} is not the leader of its node (node {node}: ranks {node * local}-"
                           f"{node * local + local - 1}, leader {node * local}) but moved data between nodes: "
                           f"{learner.ledger.crossings[0]}. Only leaders should cross the slow links")
            yield f"nodes of {local}, {n} elements", first(mismatch(got, library, "the sum (MPI_Allreduce's)"),
                                                            in_place(mine, library, "buf"), crossed)
