"""Run a collective from ``comm/collectives`` on P virtual ranks and time it.

``simulate(op, algorithm, ranks, n_bytes, topology)`` records what every
rank sends (``comm.py``), then replays it on the topology (``replay.py``).
Timing-only mode (the default) runs the unchanged algorithm once per
group of ranks that take the same path (``ranks.py``); ``data=True``
runs one thread per rank with real buffers and checks the result
against NumPy's sum.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from ..comm.buffers import array_module
from ..comm.collectives import (
    ALGORITHMS,
    ALL_GATHER_ALGORITHMS,
    ALLTOALL_ALGORITHMS,
    BROADCAST_ALGORITHMS,
    NODE_ALGORITHMS,
    REDUCE_SCATTER_ALGORITHMS,
)
from ..comm.collectives.hierarchical_pipelined import pieces_for
from ..comm.collectives.local import copy_into
from ..comm.topology import chunk_offsets
from ..comm.workspace import release
from ..costmodel.formulas import (COSTS, allreduce_hierarchical_pipelined_s, allreduce_hierarchical_s,
                                  allreduce_ring_channels_s)
from . import replay
from .arrays import DataArray, VirtualArray, set_recorder
from .comm import NONE, Concurrent, DataComm, Exchange, GroupComm, Recorder, SimAbort
from .network import Topology
from .ranks import Diverge, RankVector


def _in_place(all_to_all):
    """An all-to-all run the way the simulator runs every op: on one buffer, which ends holding the result."""
    def run(buf, comm):
        recv = array_module(buf).empty(buf.size, buf.dtype)
        all_to_all(buf, recv, comm)
        copy_into(buf, recv)
    run.__name__ = all_to_all.__name__
    return run


# The library's own collective ("mpi") has no code to run here. The all-reduces built on nodes take
# their node size from the topology (``simulate``).
OPS = {
    "allreduce": {**{k: v for k, v in ALGORITHMS.items() if k != "mpi"}, **NODE_ALGORITHMS},
    "reduce_scatter": {k: v for k, v in REDUCE_SCATTER_ALGORITHMS.items() if k != "mpi"},
    "all_gather": {k: v for k, v in ALL_GATHER_ALGORITHMS.items() if k != "mpi"},
    "broadcast": {k: v for k, v in BROADCAST_ALGORITHMS.items() if k != "mpi"},
    "all_to_all": {k: _in_place(v) for k, v in ALLTOALL_ALGORITHMS.items() if k != "mpi"},
}
DATA_MODE_MAX_RANKS = 512  # one thread per rank


@dataclass
class SimResult:
    op: str
    algorithm: str
    ranks: int
    n_bytes: int
    time_s: float  # the latest rank's clock at the end
    rank_times_s: np.ndarray
    groups: int  # how many separate calls the timing run needed (1 = the whole cluster at once)
    engine: str  # "lockstep" or "events"
    messages: int
    max_abs_error: float | None = None  # data mode: largest |result - NumPy's answer|

    def formula_s(self, topo: Topology) -> float:
        """The closed-form time with every link at the topology's slowest level.

        Exact on a flat network; with nodes it is what the formula says if
        one pretends every message crosses the inter-node network. The
        hierarchical all-reduce has a two-level formula: exact with nodes too,
        as long as no two messages share a port.
        """
        if self.algorithm in NODE_ALGORITHMS:
            local = min(topo.ranks_per_node or self.ranks, self.ranks)
            rails, nodes = topo.rails if topo.shared_port else local, self.ranks // local
            if self.algorithm == "ring_channels":
                return allreduce_ring_channels_s(self.n_bytes, local, nodes, topo.intra, topo.inter or topo.intra, rails)
            if self.algorithm == "hierarchical_pipelined":
                return allreduce_hierarchical_pipelined_s(self.n_bytes, local, nodes, topo.intra, topo.inter or topo.intra,
                                                          pieces_for(self.n_bytes, local, nodes), rails)
            return allreduce_hierarchical_s(self.n_bytes, local, nodes, topo.intra, topo.inter or topo.intra, rails)
        return COSTS[self.op][self.algorithm](self.n_bytes, self.ranks).time_s(topo.inter or topo.intra)


def lookup(op: str, algorithm: str):
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; valid: {', '.join(OPS)}")
    if algorithm not in OPS[op]:
        raise ValueError(f"unknown {op} algorithm {algorithm!r}; valid: {', '.join(OPS[op])}")
    return OPS[op][algorithm]


def _record_groups(fn, size: int, count: int, dtype) -> list[tuple[np.ndarray, Recorder]]:
    """Run ``fn`` on VirtualArrays for all ranks, splitting groups where ranks branch apart."""
    done, todo = [], [np.arange(size)]
    while todo:
        ranks = todo.pop()
        rec = Recorder()
        set_recorder(rec)
        rank = RankVector(ranks) if len(ranks) > 1 else int(ranks[0])
        try:
            fn(VirtualArray(count, dtype), GroupComm(rank, size, rec))
        except Diverge as d:
            if len(d.keys) != len(ranks):
                todo.extend(ranks[i:i + 1] for i in range(len(ranks)))
                continue
            todo.extend(ranks[d.keys == key] for key in np.unique(d.keys))
            continue
        except (TypeError, ValueError, IndexError):
            if len(ranks) == 1:
                raise
            # Code that cannot take a vector of ranks still runs, one rank at a time.
            todo.extend(ranks[i:i + 1] for i in range(len(ranks)))
            continue
        done.append((ranks, rec))
    return done


def _inputs(op: str, size: int, count: int, dtype, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each rank's input and the answer NumPy gives for it."""
    rng = np.random.default_rng(seed)
    # small integers: every sum is exact in any dtype, so any order of addition gives the same bits
    data = [rng.integers(-8, 9, count).astype(dtype) for _ in range(size)]
    total = np.sum(data, axis=0, dtype=np.float64).astype(dtype) if count else np.zeros(0, dtype)
    offs = chunk_offsets(count, size)
    if op == "allreduce":
        want = [total] * size
    elif op == "reduce_scatter":
        want = [total[offs[r]:offs[r + 1]] for r in range(size)]
    elif op == "all_gather":
        full = np.concatenate([data[r][offs[r]:offs[r + 1]] for r in range(size)])
        want = [full] * size
    elif op == "all_to_all":  # block r of every rank's buffer, in rank order
        b = count // size
        want = [np.concatenate([data[s][r * b:(r + 1) * b] for s in range(size)]) for r in range(size)]
    else:  # broadcast from rank 0
        want = [data[0]] * size
    return data, want


def _result(op: str, buf: np.ndarray, rank: int, size: int) -> np.ndarray:
    if op == "reduce_scatter":
        offs = chunk_offsets(buf.size, size)
        return buf[offs[rank]:offs[rank + 1]]
    return buf


def _run_data(op: str, fn, size: int, count: int, dtype, seed: int):
    if size > DATA_MODE_MAX_RANKS:
        raise ValueError(f"data mode runs one thread per rank: use at most {DATA_MODE_MAX_RANKS} ranks, "
                         f"or timing-only mode for {size}")
    data, want = _inputs(op, size, count, dtype, seed)
    exchange = Exchange(size)
    recorders = [Recorder() for _ in range(size)]
    errors: list[BaseException] = []

    def rank_main(r: int):
        set_recorder(recorders[r])
        try:
            fn(DataArray(data[r]), DataComm(r, size, recorders[r], exchange))
        except SimAbort:
            pass
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after every thread has stopped
            errors.append(e)
            exchange.abort(f"rank {r} failed: {e!r}")
        finally:
            release()
            exchange.done()

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(size)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    if exchange.failure:
        raise replay.Deadlock(exchange.failure)
    err = max((float(np.max(np.abs(_result(op, data[r], r, size).astype(np.float64) - want[r]), initial=0.0))
               for r in range(size)), default=0.0)
    return [(np.array([r]), recorders[r]) for r in range(size)], err


def _sends(op, n: int) -> int:
    """Messages an op records for a group of n ranks."""
    if isinstance(op, Concurrent):
        return len(op.sends) * n
    return int(np.sum(np.broadcast_to(np.asarray(op[1]) != NONE, (n,))))


def simulate(op: str, algorithm, ranks: int, n_bytes: int, topology: Topology, *,
             dtype="float32", data: bool = False, seed: int = 0) -> SimResult:
    """Simulate one collective; see the module docstring.

    ``algorithm``: a name from ``OPS[op]``, or any function ``fn(buf, comm)`` written like them
    (the graded exercises run a learner's code this way).
    """
    fn = algorithm if callable(algorithm) else lookup(op, algorithm)
    if callable(algorithm):  # named after the function (SimResult.formula_s has no formula for it)
        algorithm = getattr(fn, "__name__", repr(fn))
    if fn in NODE_ALGORITHMS.values():
        # fewer ranks than a node holds: they share one node
        fn = functools.partial(fn, ranks_per_node=min(topology.ranks_per_node or ranks, ranks))
    dtype = np.dtype(dtype)
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if n_bytes < 0 or n_bytes % dtype.itemsize:
        raise ValueError(f"n_bytes={n_bytes} must be a non-negative multiple of the {dtype} item size {dtype.itemsize}")
    count = n_bytes // dtype.itemsize
    if op == "all_to_all" and count % ranks:
        raise ValueError(f"all_to_all sends one equal block to each rank: n_bytes={n_bytes} must hold a multiple "
                         f"of {ranks} {dtype} elements")
    error = None
    if data:
        groups, error = _run_data(op, fn, ranks, count, dtype, seed)
    else:
        groups = _record_groups(fn, ranks, count, dtype)
    set_recorder(None)
    clocks, engine = replay.lockstep(groups, ranks, topology), "lockstep"
    if clocks is None:
        clocks, engine = replay.events(groups, ranks, topology), "events"
    messages = sum(_sends(entry, len(ranks)) for ranks, rec in groups for entry in rec.ops)
    return SimResult(op, algorithm, ranks, n_bytes, float(clocks.max(initial=0.0)), clocks,
                     len(groups), engine, messages, error)


def collective_time_s(op: str, algorithm: str, n_bytes: float, ranks: int, profile, kind: str = "") -> float:
    """Time of one collective on a profile's cluster: the formula when flat, the simulator with nodes.

    The simulator needs whole elements, so ``n_bytes`` is rounded to float32s.
    """
    from .network import topology_from_profile
    topo = topology_from_profile(profile, kind, message_bytes=n_bytes)
    if topo.inter is None or ranks == 1:
        return COSTS[op][algorithm](n_bytes, ranks).time_s(topo.intra)
    return simulate(op, algorithm, ranks, 4 * max(1, round(n_bytes / 4)), topo).time_s
