"""How every entry point behaves under mpiexec: one voice, and no silent hangs.

- ``print0``: rank 0 speaks, one whole line per write (ranks' output
  interleaves mid-line otherwise).
- ``main_guard``: run a click command, the environment applied first
  (``environment.py``), so that a usage error is printed once
  (by rank 0) and every rank exits non-zero, and any other exception on any
  rank aborts the whole job (MPI_Abort) instead of leaving the other ranks
  blocked in their next collective forever (docs/mpi-notes.md,
  "When a rank fails").
"""
from __future__ import annotations

import os
import sys
import time
import traceback

import click

from . import environment


_world = None  # the survivors' communicator once ranks have died (--on-failure shrink), else COMM_WORLD
_survived = False  # ranks died and this one went on: leave without MPI_Finalize (_exit)


def world():
    """The job's communicator: COMM_WORLD, or the survivors after a failure (``set_world``)."""
    if _world is not None:
        return _world
    from mpi4py import MPI
    return MPI.COMM_WORLD


def set_world(comm, survived: bool = False) -> None:
    """Make ``comm`` the job's communicator: ``print0`` speaks on its rank 0, ``abort`` ends it.
    ``survived``: ranks died before; this process will end without MPI_Finalize (``_exit``)."""
    global _world, _survived
    _world, _survived = comm, _survived or survived


def _exit(code) -> None:
    """sys.exit, except after ranks died: Open MPI's MPI_Finalize then hangs in about half the jobs whose
    ranks died (measured with two dead ranks of six), so flush and end the process without it."""
    if not _survived:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def rank() -> int:
    return world().Get_rank()


def print0(*parts, file=None) -> None:
    """Print one line from rank 0 only, flushed at once (``PARALLEL_LM_ALL_RANKS=1``: every rank, prefixed)."""
    text = " ".join(str(p) for p in parts)
    r = rank()
    if environment.current().all_ranks:
        text = "\n".join(f"[rank {r}] {line}" for line in text.splitlines() or [""])
    elif r != 0:
        return
    out = file or sys.stdout
    out.write(text + "\n")
    out.flush()


def quiet_barrier(comm, poll_s: float = 1e-4) -> None:
    """A barrier that sleeps while it waits, so idle ranks leave the cores to busy ones.

    Oversubscribed MPICH ranks spin (use a core) while they wait in a blocking barrier.
    """
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def on_rank0(comm, compute):
    """``compute()`` on rank 0 alone (a timing, a one-process reference), its result broadcast to every rank of
    ``comm``; the others wait in ``quiet_barrier``, leaving rank 0 the cores instead of spinning in the broadcast."""
    value = compute() if comm.Get_rank() == 0 else None
    quiet_barrier(comm)
    return comm.bcast(value, root=0)


def abort(code: int = 1, comm=None) -> None:
    """End the whole job now: every rank, even those waiting in a collective (of ``comm``, default the job's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    comm = world() if comm is None else comm
    if comm.Get_size() > 1:
        # Give the launcher a moment to forward what this rank just wrote: MPI_Abort
        # makes it kill every process, and a message still in a pipe can be lost.
        time.sleep(0.3)
        comm.Abort(code)
    sys.exit(code)


def main_guard(command: click.Command, args=None) -> None:
    """Run a click command as an MPI program's main (see the module docstring), the environment applied first."""
    try:
        try:
            environment.apply()
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        command.main(args=args, standalone_mode=False)
        if _survived:
            _exit(0)
    except click.exceptions.Abort:
        # Ctrl-C on the launcher: end every rank.
        abort(130)
    except click.ClickException as e:
        # Bad flags: every rank parsed the same argv and failed the same way before
        # any communication, so all exit together and one message is enough.
        if rank() == 0:
            e.show()
        _exit(e.exit_code)
    except SystemExit as e:
        if e.code not in (0, None):
            abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException:
        sys.stderr.write(f"[rank {rank()}] fatal error, aborting all ranks:\n{traceback.format_exc()}")
        abort(1)


def start_script() -> None:
    """What a script without ``main_guard`` (a lesson, a test program) does first: apply the environment
    (``environment.apply``), and make an uncaught exception on any rank abort the whole job."""
    def hook(kind, value, tb):
        sys.stderr.write(f"[rank {rank()}] fatal error, aborting all ranks:\n"
                         + "".join(traceback.format_exception(kind, value, tb)))
        abort(1)
    sys.excepthook = hook
    environment.apply()


def check(ok: bool, message: str) -> None:
    """A self-check: on failure print ``CHECK FAILED: message`` and end the job with exit 1."""
    if not ok:
        sys.stderr.write(f"[rank {rank()}] CHECK FAILED: {message}\n")
        abort(1)


def agree(comm, fn, errors=(ValueError, OSError)):
    """Run ``fn()`` on every rank; if it raised ``errors`` on any rank, raise one UsageError on all.

    For work that can fail on some ranks only (a file missing on one node):
    no rank walks on into a collective while another has stopped.
    """
    try:
        result, message = fn(), None
    except errors as e:
        result, message = None, str(e)
    messages = comm.allgather(message)
    first = next((m for m in messages if m), None)
    if first:
        raise click.UsageError(first if messages[0] == first else f"on rank {messages.index(first)}: {first}")
    return result


def _affinity() -> set[int]:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def node_share(comm) -> tuple[int, int]:
    """(ranks of ``comm`` on this node, cores their affinity masks cover together). Collective.

    The union, not this rank's own mask: a launcher that binds each rank to
    a core (Open MPI does by default) leaves one core per rank, while
    unbound ranks all see every core.
    """
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    masks = local.allgather(_affinity())
    local.Free()
    return len(masks), len(set().union(*masks))


def first_on_node(comm) -> bool:
    """Whether this rank is the lowest of ``comm``'s ranks on its node: one per node reads what they share. Collective."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    first = local.Get_rank() == 0
    local.Free()
    return first


def threads_per_rank(comm, requested: int | None = None, share: tuple[int, int] | None = None) -> int:
    """Cores / ranks on this node (at least 1), unless ``requested``; ``share``: ``node_share(comm)`` if known.

    torch drops to one thread per rank under mpiexec on its own (seen with the MPICH wheel); this
    chooses deliberately instead, so 8 ranks on 2 cores do not fight.
    """
    if requested:
        return requested
    ranks, cores = share or node_share(comm)
    return max(1, cores // ranks)


def netem_network(spec: str | None):
    """The Network a --netem spec names (for comm/netem.py's ``NetemComm``), or None without one.

    Resolves names and files through ``costmodel.profiles``; a two-level
    profile emulates its inter-node level (every message as if between
    nodes). A bad spec raises ValueError naming the flag.
    """
    if not spec:
        return None
    from .costmodel.profiles import load_profile
    try:
        return load_profile(spec).slowest()
    except ValueError as e:
        raise ValueError(f"--netem: {e}") from None


def netem_inside(spec: str | None):
    """(intra-node Network, ranks per node) of a two-level --netem profile; (None, 0) for one level or no spec."""
    if not spec:
        return None, 0
    from .costmodel.profiles import load_profile
    profile = load_profile(spec)
    return (profile.network(), profile.ranks_per_node) if profile.inter_node else (None, 0)


def emulated(comm, network, inside=None, ranks_per_node: int = 0):
    """``comm`` whose point-to-point messages take as long as on ``network`` (None: ``comm`` itself);
    with ``inside`` and ``ranks_per_node``, messages within an emulated node take ``inside``'s time."""
    if network is None:
        return comm
    from .comm.netem import NetemComm
    return NetemComm(comm, network.alpha_s, network.beta_s_per_byte, inside, ranks_per_node)


def size_option(ctx, param, text) -> int:
    """click callback: a byte count with K/M/G suffixes (sizes.parse_size), or a usage error."""
    from .sizes import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def comma_list(text: str, parse, what: str) -> list:
    """``parse`` applied to each comma-separated item; a usage error naming ``what`` when one fails or none is given."""
    try:
        values = [parse(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise click.BadParameter(f"{what}: {e}") from None
    if not values:
        raise click.BadParameter(f"give at least one {what}")
    return values


def rank_count(text: str) -> int:
    """A number of ranks, at least 1 (ValueError otherwise)."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} ranks: need at least 1")
    return value
