"""Turning recorded ops into time: the simulator's clock rules.

Every rank has a clock. Before an op its clock advances by the bytes it
reduced times gamma. A message of b bytes from s to d starts when both
have posted their halves (rendezvous: the later of the two clocks) and
ends alpha + b.beta later, on the link the topology gives; a send and a
receive in one Sendrecv run at once (full duplex) and the op ends when
both have. The collective's time is the latest clock at the end. These
are the assumptions the closed-form formulas make, so on a flat network
the two agree to rounding (tests/test_sim.py).

Two engines give the same answer:
- ``lockstep``: when every rank issues the same number of ops and op i
  of a rank always pairs with op i of its peers (ring, recursive
  halving/doubling on powers of two), each op index is one vectorized
  step over all ranks. This is what makes 4,096-rank rings fast.
- ``events``: everything else (trees, folds, the naive root, shared
  switch ports, messages started together): a discrete-event loop over
  ranks in clock order, matching sends to receives by (source,
  destination, tag) in order, as MPI does. Ports are reserved first come,
  first served, so k messages through one port take k times as long (and
  one alpha): a node's NIC rail (``Topology.port``) with a shared switch
  port, otherwise each rank's own way in and out at each level. A rank
  with one message at a time never waits for its own ports; messages
  started together (``comm.Concurrent``: the pipelined all-reduce's
  NVLink and InfiniBand steps) share them.
"""
from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from .comm import NONE, Concurrent


class Deadlock(RuntimeError):
    """Ranks wait for messages nobody sends (under rendezvous semantics)."""


def _field(group_ops, i, k, size):
    """Field k of op i across all ranks, as a (size,) array."""
    if len(group_ops) == 1:
        return np.broadcast_to(np.asarray(group_ops[0][1][i][k]), (size,))
    out = np.empty(size, dtype=np.float64 if k in (0, 2, 5) else np.int64)
    for ranks, ops in group_ops:
        out[ranks] = ops[i][k]
    return out


def lockstep(groups, size: int, topo) -> np.ndarray | None:
    """Clocks at the end, or None when the ops do not pair up index by index."""
    if topo.shared_port or any(isinstance(op, Concurrent) for _, rec in groups for op in rec.ops):
        return None
    lengths = {len(rec.ops) for _, rec in groups}
    if len(lengths) != 1:
        return None
    # one group covering every rank in order needs no scattering
    if len(groups) == 1 and not np.array_equal(groups[0][0], np.arange(size)):
        return None
    group_ops = [(ranks, rec.ops) for ranks, rec in groups]
    me = np.arange(size)
    gamma = topo.gamma_s_per_byte
    t = np.zeros(size)
    for i in range(lengths.pop()):
        f = [_field(group_ops, i, k, size) for k in range(7)]
        gam, dest, sbytes, stag, src, rbytes, rtag = f
        sends, recvs = dest != NONE, src != NONE
        s_rank, s_dest = me[sends], dest[sends]
        if sends.sum() != recvs.sum() or not (
                np.array_equal(src[s_dest], s_rank) and np.array_equal(rtag[s_dest], stag[sends])
                and np.array_equal(dest[src[recvs]], me[recvs])):
            return None
        too_big = sbytes[sends] > rbytes[s_dest]
        if too_big.any():
            j = np.flatnonzero(too_big)[0]
            raise ValueError(f"rank {s_rank[j]} sends {sbytes[sends][j]:.0f} B to rank {s_dest[j]}, "
                             f"whose receive buffer holds {rbytes[s_dest][j]:.0f} B")
        posted = t + gam * gamma
        alpha, beta = topo.link(s_rank, s_dest)
        end = np.maximum(posted[s_rank], posted[s_dest]) + alpha + sbytes[sends] * beta
        t = posted.copy()
        t[s_rank] = np.maximum(t[s_rank], end)
        t[s_dest] = np.maximum(t[s_dest], end)
    tail = np.zeros(size)
    for ranks, rec in groups:
        tail[ranks] = rec.tail_gamma
    return t + tail * gamma


def _split_concurrent(op: Concurrent, n: int) -> list[Concurrent]:
    """One ``Concurrent`` of plain numbers per rank of a group's op."""
    col = lambda v: np.broadcast_to(np.asarray(v), (n,)).tolist()
    gamma = col(op.gamma)
    halves = [[list(zip(*(col(v) for v in half))) for half in side] for side in (op.sends, op.recvs)]
    return [Concurrent(gamma[j], [h[j] for h in halves[0]], [h[j] for h in halves[1]]) for j in range(n)]


def per_rank_ops(groups, size: int):
    """Split group ops into one list of plain-number ops per rank, and each rank's tail gamma."""
    ops: list = [None] * size
    tails = [0.0] * size
    for ranks, rec in groups:
        n = len(ranks)
        per = [[] for _ in range(n)]
        for op in rec.ops:
            if isinstance(op, Concurrent):
                for j, row in enumerate(_split_concurrent(op, n)):
                    per[j].append(row)
                continue
            cols = [np.broadcast_to(np.asarray(v), (n,)).tolist() for v in op]
            for j, row in enumerate(zip(*cols)):
                per[j].append(row)
        tail = np.broadcast_to(np.asarray(rec.tail_gamma, dtype=np.float64), (n,)).tolist()
        for j, r in enumerate(ranks.tolist()):
            ops[r], tails[r] = per[j], tail[j]
    return ops, tails


def events(groups, size: int, topo) -> np.ndarray:
    """Clocks at the end, by discrete events in clock order."""
    ops, tails = per_rank_ops(groups, size)
    gamma = topo.gamma_s_per_byte
    t = [0.0] * size
    pc = [0] * size
    open_halves = [0] * size
    op_end = [0.0] * size
    charged = [False] * size
    sends: dict[tuple, deque] = {}
    recvs: dict[tuple, deque] = {}
    port_free: dict[tuple, float] = {}
    heap = [(0.0, r) for r in range(size)]

    def transfer(src, dst, nbytes, start):
        alpha, beta = topo.link(src, dst)
        if topo.shared_port and topo.node(src) != topo.node(dst):
            out_port, in_port = ("out", *topo.port(src)), ("in", *topo.port(dst))
        else:  # the ranks' own ways out and in at this level
            level = topo.inter is not None and topo.node(src) != topo.node(dst)
            out_port, in_port = ("out rank", level, src), ("in rank", level, dst)
        start = max(start, port_free.get(out_port, 0.0), port_free.get(in_port, 0.0))
        port_free[out_port] = port_free[in_port] = start + nbytes * beta
        return start + alpha + nbytes * beta

    def finish_half(r, end):
        op_end[r] = max(op_end[r], end)
        open_halves[r] -= 1
        if open_halves[r] == 0:
            t[r] = op_end[r]
            pc[r] += 1
            heapq.heappush(heap, (t[r], r))

    def meet(key, others, mine, now, size_here, sender, receiver, sending):
        """Post one half of a message; if its other half is waiting, the transfer happens now."""
        waiting = others.get(key)
        if not waiting:
            mine.setdefault(key, deque()).append((now, size_here))
            return
        posted, size_there = waiting.popleft()
        nbytes, capacity = (size_here, size_there) if sending else (size_there, size_here)
        if nbytes > capacity:
            raise ValueError(f"rank {sender} sends {nbytes} B to rank {receiver}, whose receive buffer holds {capacity} B")
        end = transfer(sender, receiver, nbytes, max(now, posted))
        finish_half(receiver, end)
        finish_half(sender, end)

    while heap:
        _, r = heapq.heappop(heap)
        if pc[r] == len(ops[r]):
            continue
        op = ops[r][pc[r]]
        concurrent = isinstance(op, Concurrent)
        gam = op.gamma if concurrent else op[0]
        if not charged[r] and gam:
            charged[r] = True
            t[r] += gam * gamma
            heapq.heappush(heap, (t[r], r))
            continue
        charged[r] = False
        op_end[r] = t[r]
        if concurrent:
            out, into = op.sends, op.recvs
        else:
            _, dest, sbytes, stag, src, rbytes, rtag = op
            out = [(dest, sbytes, stag)] if dest != NONE else []
            into = [(src, rbytes, rtag)] if src != NONE else []
        open_halves[r] = len(out) + len(into)  # at least one: an op records a message
        for dest, sbytes, stag in out:
            meet((r, dest, stag), recvs, sends, t[r], sbytes, r, dest, sending=True)
        for src, rbytes, rtag in into:
            meet((src, r, rtag), sends, recvs, t[r], rbytes, src, r, sending=False)
    stuck = [r for r in range(size) if pc[r] < len(ops[r])]
    if stuck:
        r = stuck[0]
        op = ops[r][pc[r]]
        dest, src = ((op.sends[0][0] if op.sends else NONE, op.recvs[0][0] if op.recvs else NONE)
                     if isinstance(op, Concurrent) else (op[1], op[4]))
        raise Deadlock(f"{len(stuck)} simulated ranks never finish: with blocking (rendezvous) messages, rank {r} "
                       f"waits in op {pc[r]} (send to {dest}, receive from {src}); {NONE} means none")
    return np.array(t) + np.array(tails) * gamma
