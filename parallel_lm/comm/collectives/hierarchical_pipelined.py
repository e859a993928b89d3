"""Pipelined hierarchical all-reduce: the three phases of hierarchical.py on K pieces at once.

Algorithm: the buffer is cut into K pieces (``chunk_offsets``). Each piece
goes through the hierarchical all-reduce's phases, one ring step at a
time: L-1 steps of ring reduce-scatter inside its node (local rank i ends
with the node's sum of the piece's chunk i), 2(N-1) steps of ring
all-reduce of that chunk across the N nodes on rail i (one ring per local
rank), and L-1 steps of ring all-gather inside the node: S = 2(L-1) +
2(N-1) steps per piece. Piece j starts at step j, so at step t every
piece with 0 <= t - j < S takes its next step, and all those messages
(Isend/Irecv) are in flight together: while one piece crosses the
InfiniBand rail, the next ones reduce or gather over NVLink (NCCL's
pipelined chunks). K + S - 1 steps in all; each ends when its messages
have arrived, and the received chunks of reducing phases are added in.

Every element is summed by one chain of ranks in a fixed order (the
node's ring, then the ring across nodes), so every rank ends with the
same bits. Messages between a pair of ranks keep a tag per phase and
arrive in the order they were started, as MPI guarantees.

Restrictions: the communicator's size must be a multiple of L; one ring
per local rank crosses between nodes (rails = L; with fewer NICs the
rings share them, which the simulator's switch ports and the formula
price).

Cost: per step, the intra-node messages of the pieces in their node
phases share the rank's NVLink, the inter-node ones its NIC, and the step
takes the slower (``costmodel.formulas.allreduce_hierarchical_pipelined_s``).
With K >> S the time nears max(2(L-1)/L.n.beta_i, 2(N-1)/N.(n/L).beta_o)
instead of their sum: on 8-rail DGX A100 nodes the NICs, not NVLink plus
the NICs, set the pace.

Reference: NCCL's ring and tree algorithms cut buffers into chunks that
pipeline through NVLink and network hops (Jeaugey, "NCCL 2.0", GTC 2017);
hierarchical all-reduce: Jia et al. 2018.
"""
from __future__ import annotations

from ..buffers import array_module
from ..nodes import rails, ranks_per_node
from ..topology import Ring, chunk_offsets
from ..settings import RAILS
from ..workspace import scratch
from .local import wait_then_add

TAG_RS, TAG_ACROSS, TAG_AG = 61, 62, 63
MAX_PIECES = 256
MIN_CROSSING_BYTES = 64 << 10  # a piece's message across nodes is at least this long, where the buffer allows


def pieces_for(n_bytes: float, local: int, nodes: int) -> int:
    """K: as many pieces as keep each message between nodes (n/(K L N) bytes) at least MIN_CROSSING_BYTES, at
    most MAX_PIECES; 1 for a buffer too short to cut."""
    return int(max(1, min(MAX_PIECES, n_bytes // (local * nodes * MIN_CROSSING_BYTES))))


def phase_of(s: int, local: int, nodes: int) -> tuple[str, int]:
    """A piece's step s of S as (phase, step within it): "rs" (L-1 steps), "across" (2(N-1)), "ag" (L-1)."""
    if s < local - 1:
        return "rs", s
    s -= local - 1
    if s < 2 * (nodes - 1):
        return "across", s
    return "ag", s - 2 * (nodes - 1)


def allreduce_hierarchical_pipelined(buf, comm, ranks_per_node: int, pieces: int | None = None):
    size = comm.Get_size()
    if ranks_per_node < 1 or size % ranks_per_node:
        raise ValueError(f"hierarchical all-reduce needs the {size} ranks to fill nodes of {ranks_per_node}: "
                         f"use a rank count that is a multiple of {ranks_per_node}")
    L, N, n = ranks_per_node, size // ranks_per_node, buf.size
    if size == 1 or n == 0:
        return buf
    K = pieces or pieces_for(buf.nbytes, L, N)
    if K < 1:
        raise ValueError(f"pieces must be >= 1, got {K}")
    rank = comm.Get_rank()
    node, local = rank // L, rank % L
    inside, across = Ring(local, L), Ring(node, N)
    right, left = node * L + inside.right, node * L + inside.left  # world ranks of my node's ring
    up, down = across.right * L + local, across.left * L + local  # and of my rail's ring across nodes
    piece = chunk_offsets(n, K)
    # receive space: a chunk for each piece in the node's reduce-scatter, a part of one for each in the reduce half
    # of the ring across nodes, at most L-1 and N-1 pieces at a time (piece j uses slot j mod L-1, mod N-1)
    chunk = int(chunk_offsets(piece[1], L)[1])  # the longest chunk of the longest piece (the first ones)
    part = int(chunk_offsets(chunk, N)[1])
    space = scratch((L - 1) * chunk + (N - 1) * part, buf.dtype, array_module(buf))
    S = 2 * (L - 1) + 2 * (N - 1)
    for t in range(K + S - 1):
        requests, adds = [], []
        for j in range(max(0, t - S + 1), min(K, t + 1)):
            mine = buf[piece[j]:piece[j + 1]]
            offs = chunk_offsets(mine.size, L)
            phase, s = phase_of(t - j, L, N)
            if phase == "across":
                c = mine[offs[local]:offs[local + 1]]  # the node's sum of my chunk: all-reduced on my rail
                sub = chunk_offsets(c.size, N)
                if s < N - 1:
                    send, recv = across.reduce_scatter_chunks(s)
                    into = space[(L - 1) * chunk + (j % (N - 1)) * part:][: sub[recv + 1] - sub[recv]]
                    adds.append((c[sub[recv]:sub[recv + 1]], into))
                else:
                    send, recv = across.all_gather_chunks(s - (N - 1))
                    into = c[sub[recv]:sub[recv + 1]]
                requests += [comm.Irecv(into, source=down, tag=TAG_ACROSS),
                             comm.Isend(c[sub[send]:sub[send + 1]], dest=up, tag=TAG_ACROSS)]
            elif phase == "rs":
                send, recv = inside.reduce_scatter_chunks(s)
                into = space[(j % (L - 1)) * chunk:][: offs[recv + 1] - offs[recv]]
                adds.append((mine[offs[recv]:offs[recv + 1]], into))
                requests += [comm.Irecv(into, source=left, tag=TAG_RS),
                             comm.Isend(mine[offs[send]:offs[send + 1]], dest=right, tag=TAG_RS)]
            else:
                send, recv = inside.all_gather_chunks(s)
                requests += [comm.Irecv(mine[offs[recv]:offs[recv + 1]], source=left, tag=TAG_AG),
                             comm.Isend(mine[offs[send]:offs[send + 1]], dest=right, tag=TAG_AG)]
        wait_then_add(requests, adds)
    return buf


def allreduce_hierarchical_pipelined_nodes(buf, comm):
    """The registry's "hierarchical_pipelined": nodes from ``comm/nodes.py`` (emulated or real), a ring across
    nodes for every local rank."""
    per_node = ranks_per_node(comm)
    if rails(per_node) != per_node:
        raise ValueError(f"hierarchical_pipelined runs one ring across nodes per local rank: unset {RAILS}, "
                         f"or use --allreduce hierarchical for fewer rails")
    return allreduce_hierarchical_pipelined(buf, comm, per_node)
