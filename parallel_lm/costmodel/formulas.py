"""Alpha-beta-gamma costs of every collective algorithm, under the names the code uses.

A message of b bytes costs alpha + b.beta (latency + bytes / bandwidth);
reducing b bytes locally costs b.gamma. Each function returns a ``Cost``:
how many alphas, bytes of beta and bytes of gamma lie on the critical
path for ``n_bytes`` on ``p`` ranks, in the style of Thakur, Rabenseifner &
Gropp, "Optimization of collective communication operations in MPICH",
IJHPCA 19(1), 2005 (section 4 and its table of costs), and of MPICH's
per-algorithm source comments. ``Cost.time_s(network)`` turns it into
seconds. Non-powers of two use the fold of ``comm/collectives/fold.py``
(the extra ranks hand their data to a neighbour and get the result back),
so the formulas describe this project's code, message for message.

Bus bandwidth factors follow nccl-tests (doc/PERFORMANCE.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Must equal parallel_lm.comm.collectives.ring.SEGMENT_BYTES (tests check it): the ring
# reduce-scatter sends chunks longer than this as several messages, each paying alpha.
RING_SEGMENT_BYTES = 1 << 20


@dataclass(frozen=True)
class Network:
    """Per-message latency, per-byte transfer time and per-byte reduction time."""

    alpha_s: float
    beta_s_per_byte: float
    gamma_s_per_byte: float = 0.0


@dataclass(frozen=True)
class Cost:
    """alpha_count.alpha + beta_bytes.beta + gamma_bytes.gamma."""

    alpha_count: float = 0.0
    beta_bytes: float = 0.0
    gamma_bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.alpha_count + other.alpha_count, self.beta_bytes + other.beta_bytes,
                    self.gamma_bytes + other.gamma_bytes)

    def time_s(self, net: Network) -> float:
        return self.alpha_count * net.alpha_s + self.beta_bytes * net.beta_s_per_byte + self.gamma_bytes * net.gamma_s_per_byte


def _lg(p: int) -> int:
    """ceil(log2 p)."""
    return (p - 1).bit_length()


def _pof2(p: int) -> int:
    return 1 << (p.bit_length() - 1)


def _fold_in(n: float, p: int) -> Cost:
    return Cost(1, n, n) if p != _pof2(p) else Cost()


def _fold_out(n: float, p: int) -> Cost:
    return Cost(1, n) if p != _pof2(p) else Cost()


def allreduce_naive(n: float, p: int) -> Cost:
    """2(p-1).alpha + 2(p-1).n.beta + (p-1).n.gamma: everything through the root, one message at a time."""
    return Cost(2 * (p - 1), 2 * (p - 1) * n, (p - 1) * n)


def broadcast_binomial(n: float, p: int) -> Cost:
    """ceil(lg p).(alpha + n.beta)."""
    return Cost(_lg(p), _lg(p) * n)


def allreduce_tree(n: float, p: int) -> Cost:
    """Binomial reduce + binomial broadcast: 2 ceil(lg p).alpha + 2 ceil(lg p).n.beta + ceil(lg p).n.gamma."""
    return Cost(_lg(p), _lg(p) * n, _lg(p) * n) + broadcast_binomial(n, p)


def reduce_scatter_ring(n: float, p: int, segment_bytes: float = RING_SEGMENT_BYTES) -> Cost:
    """(p-1).s.alpha + (p-1)/p.n.beta + (p-1)/p.n.gamma, s = segments per chunk (1 for chunks <= segment)."""
    if p == 1:
        return Cost()
    segments = max(1, math.ceil(n / p / segment_bytes))
    return Cost((p - 1) * segments, (p - 1) / p * n, (p - 1) / p * n)


def all_gather_ring(n: float, p: int) -> Cost:
    """(p-1).alpha + (p-1)/p.n.beta."""
    return Cost(p - 1, (p - 1) / p * n)


def allreduce_ring(n: float, p: int, segment_bytes: float = RING_SEGMENT_BYTES) -> Cost:
    """2(p-1).alpha + 2(p-1)/p.n.beta + (p-1)/p.n.gamma (plus segment alphas for long chunks)."""
    return reduce_scatter_ring(n, p, segment_bytes) + all_gather_ring(n, p)


def allreduce_recursive_doubling(n: float, p: int) -> Cost:
    """lg p'.(alpha + n.beta + n.gamma), p' = pof2; + 2.alpha + 2n.beta + n.gamma to fold when p != p'."""
    lg = _pof2(p).bit_length() - 1
    return _fold_in(n, p) + Cost(lg, lg * n, lg * n) + _fold_out(n, p)


def _block_bytes(n: float, p: int) -> list[float]:
    """Bytes of each newrank's block when p ranks fold onto p' = pof2: the first
    p - p' newranks carry two ranks' chunks, the rest one (``Pof2.block_offsets``)."""
    q = _pof2(p)
    return [n / p * (2 if i < p - q else 1) for i in range(q)]


def _pof2_phase_bytes(blocks: list[float], halving: bool) -> tuple[float, float]:
    """(beta bytes, gamma bytes) of the busiest newrank in recursive halving or doubling.

    Per round a rank's cost is the larger of the ranges it sends and
    receives; with even blocks this sums to (p'-1)/p'.n, with the uneven
    blocks of a fold it is a little more, and this walks the rounds exactly.
    """
    q = len(blocks)
    prefix = [0.0]
    for b in blocks:
        prefix.append(prefix[-1] + b)
    size = lambda lo, hi: prefix[hi] - prefix[lo]
    worst_beta = worst_gamma = 0.0
    for r in range(q):
        beta = gamma = 0.0
        if halving:
            lo, hi, mask = 0, q, q >> 1
            while mask:
                mid = (lo + hi) // 2
                keep, send = ((lo, mid), (mid, hi)) if not r & mask else ((mid, hi), (lo, mid))
                beta += max(size(*keep), size(*send))
                gamma += size(*keep)
                lo, hi = keep
                mask >>= 1
        else:
            mask = 1
            while mask < q:
                mine = r & ~(mask - 1)
                theirs = mine ^ mask
                beta += max(size(mine, mine + mask), size(theirs, theirs + mask))
                mask <<= 1
        worst_beta, worst_gamma = max(worst_beta, beta), max(worst_gamma, gamma)
    return worst_beta, worst_gamma


def reduce_scatter_recursive_halving(n: float, p: int) -> Cost:
    """lg p'.alpha + (p'-1)/p'.n.beta + (p'-1)/p'.n.gamma for p = p' a power of two.

    Otherwise: fold in (alpha + n.beta + n.gamma), halving over uneven blocks
    (the newranks that absorbed a fold carry two chunks), and the chunk
    handed back (alpha + n/p.beta).
    """
    q = _pof2(p)
    beta, gamma = _pof2_phase_bytes(_block_bytes(n, p), halving=True)
    back = Cost(1, n / p) if p != q else Cost()
    return _fold_in(n, p) + Cost(q.bit_length() - 1, beta, gamma) + back


def all_gather_recursive_doubling(n: float, p: int) -> Cost:
    """lg p'.alpha + (p'-1)/p'.n.beta for p = p'; otherwise also the chunk in, uneven blocks, and the result out."""
    q = _pof2(p)
    beta, _ = _pof2_phase_bytes(_block_bytes(n, p), halving=False)
    chunk_in = Cost(1, n / p) if p != q else Cost()
    return chunk_in + Cost(q.bit_length() - 1, beta) + _fold_out(n, p)


def allreduce_rabenseifner(n: float, p: int) -> Cost:
    """2 lg p'.alpha + 2(p'-1)/p'.n.beta + (p'-1)/p'.n.gamma; + 2.alpha + 2n.beta + n.gamma to fold."""
    q = _pof2(p)
    lg = q.bit_length() - 1
    return _fold_in(n, p) + Cost(2 * lg, 2 * (q - 1) / q * n, (q - 1) / q * n) + _fold_out(n, p)


def allreduce_hierarchical_s(n: float, local: int, nodes: int, intra: Network, inter: Network, rails: int = 1,
                             segment_bytes: float = RING_SEGMENT_BYTES, rings: int | None = None) -> float:
    """Seconds of ``comm/collectives/hierarchical.py`` on a two-level network.

    Ring reduce-scatter and all-gather among the ``local`` ranks of a node
    on ``intra``, and ``rings`` ring all-reduces (default: one per local
    rank) of n/rings bytes each across ``nodes`` nodes on ``inter``. With
    fewer rings than local ranks, each ring's leader first receives its
    members' chunks and afterwards sends them back: 2(local/rings - 1)
    messages of n/local bytes on ``intra``. With fewer ``rails`` (NICs per
    node) than rings, the rings share the NICs and each byte takes
    rings/rails times longer. Gamma is the intra level's (reductions
    happen in memory).
    """
    rings = local if rings is None else rings
    share = max(1.0, rings / rails) if nodes > 1 else 1.0
    slow = Network(inter.alpha_s, inter.beta_s_per_byte * share, intra.gamma_s_per_byte)
    handoff = 2 * (local // rings - 1)
    inside = reduce_scatter_ring(n, local, segment_bytes) + all_gather_ring(n, local) + Cost(handoff, handoff * n / local)
    return inside.time_s(intra) + allreduce_ring(n / rings, nodes, segment_bytes).time_s(slow)


def allreduce_hierarchical_pipelined_s(n: float, local: int, nodes: int, intra: Network, inter: Network,
                                       pieces: int, rails: int | None = None) -> float:
    """Seconds of ``comm/collectives/hierarchical_pipelined.py``: K = ``pieces`` pieces, piece j taking its
    S = 2(L-1) + 2(N-1) ring steps at steps j..j+S-1, all pieces' messages of a step in flight together.

    A step's messages inside the node (pieces in their reduce-scatter or all-gather, n/(K L) bytes each)
    leave one after another through the rank's own link, one alpha for all; those across nodes (n/(K L N)
    bytes) through its NIC, shared by local/rails rings; the step lasts the slower, and the chunks received
    in the reducing phases are added after it (gamma).
    """
    L, N, K = local, nodes, pieces
    share = max(1.0, L / (rails or L)) if N > 1 else 1.0
    chunk, part = n / (K * L), n / (K * L * N)
    S = 2 * (L - 1) + 2 * (N - 1)
    total = 0.0
    for t in range(K + S - 1):
        steps = [t - j for j in range(max(0, t - S + 1), min(K, t + 1))]
        crossing = sum(1 for s in steps if L - 1 <= s < L - 1 + 2 * (N - 1))
        inside = len(steps) - crossing
        reduced = chunk * sum(1 for s in steps if s < L - 1) + part * sum(1 for s in steps if L - 1 <= s < L + N - 2)
        node_s = intra.alpha_s + inside * chunk * intra.beta_s_per_byte if inside else 0.0
        cross_s = inter.alpha_s + crossing * part * inter.beta_s_per_byte * share if crossing else 0.0
        total += max(node_s, cross_s) + reduced * intra.gamma_s_per_byte
    return total


def allreduce_ring_channels_s(n: float, local: int, nodes: int, intra: Network, inter: Network,
                              rails: int | None = None) -> float:
    """Seconds of ``comm/collectives/ring_channels.py``: ``local`` rings over all p ranks, 2(p-1) steps, each
    with every ring's message of b = n/(local p) bytes in flight. A rank's messages inside the node leave one
    after another through its link (local - 1 of them with several nodes, where one leaves through its NIC,
    shared by local/rails ranks; local on one node); the step lasts the slower, then the received chunks of
    the reduce-scatter steps are added (gamma)."""
    p = local * nodes
    b = n / (local * p)
    inside = local - 1 if nodes > 1 else local
    node_s = intra.alpha_s + inside * b * intra.beta_s_per_byte if inside else 0.0
    cross_s = inter.alpha_s + b * inter.beta_s_per_byte * max(1.0, local / (rails or local)) if nodes > 1 else 0.0
    step = max(node_s, cross_s)
    return 2 * (p - 1) * step + (p - 1) * local * b * intra.gamma_s_per_byte


def all_to_all_pairwise(n: float, p: int) -> Cost:
    """(p-1).alpha + (p-1)/p.n.beta: one block of n/p bytes to each other rank, one step per rank."""
    return Cost(p - 1, (p - 1) / p * n)


def all_to_all_bruck(n: float, p: int) -> Cost:
    """ceil(lg p).alpha + sum_k c_k.(n/p).beta, c_k = how many of 0..p-1 have bit k set.

    For p = 2^m each step moves half the blocks: lg p.alpha + (lg p)/2.n.beta.
    """
    moved = sum(sum(1 for i in range(p) if i & (1 << k)) for k in range(_lg(p)))
    return Cost(_lg(p), moved * n / p)


def parameter_server_sync(n: float, workers: int, servers: int = 1) -> Cost:
    """One synchronous step: every worker pushes its gradient and pulls the parameters.

    Each server owns n/servers bytes and its single link carries, one after
    another, ``workers`` pushes and ``workers`` pulls of that shard, and it
    sums the pushed shards: 2W.alpha + 2W.(n/k).beta + W.(n/k).gamma. The
    server link is the bottleneck: time grows with W, unlike ring all-reduce.
    """
    shard = n / servers
    return Cost(2 * workers, 2 * workers * shard, workers * shard)


COSTS = {
    "allreduce": {"naive": allreduce_naive, "tree": allreduce_tree, "ring": allreduce_ring,
                  "recursive_doubling": allreduce_recursive_doubling, "rabenseifner": allreduce_rabenseifner},
    "reduce_scatter": {"ring": reduce_scatter_ring, "recursive_halving": reduce_scatter_recursive_halving},
    "all_gather": {"ring": all_gather_ring, "recursive_doubling": all_gather_recursive_doubling},
    "broadcast": {"binomial": broadcast_binomial},
    "all_to_all": {"pairwise": all_to_all_pairwise, "bruck": all_to_all_bruck},
}


def bus_factor(op: str, ranks: int) -> float:
    """busbw / algbw for ``op`` on ``ranks`` ranks (nccl-tests doc/PERFORMANCE.md)."""
    if op == "allreduce":
        return 2 * (ranks - 1) / ranks
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (ranks - 1) / ranks
    if op in ("broadcast", "pingpong"):
        return 1.0
    raise ValueError(f"unknown op {op!r}; valid: allreduce, reduce_scatter, all_gather, broadcast, all_to_all, pingpong")
