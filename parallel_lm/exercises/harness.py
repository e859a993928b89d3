"""The MPI side of ``exercises check``: one run of one exercise's checker on the ranks it was launched on.

    mpiexec -n K python -m parallel_lm.exercises.harness ID FILE SEED

Every rank loads FILE and runs the checker on a ``StrictComm`` (every Send
synchronous, every request kept: strict.py), which yields one verdict per
case (its description, and on this rank either None or what was wrong).
A case also fails on a rank that left a request unfinished. After each
case the ranks compare verdicts; rank 0 prints "ok" or the
first failing rank's hint and all ranks stop together, with exit 1. If the
learner's code raises, that rank prints the error and ends the job
(``runtime.abort``): the other ranks may be waiting for its messages.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..runtime import abort, print0
from .catalog import find
from .strict import StrictComm

STUB_GRACE_S = 10.0  # seen: a stub's rank 1 aborted 0.3 s after raising, before a busy rank 0 had printed


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _learner_error(e: BaseException, path: Path) -> str:
    """The exception, with the frames of the learner's file only (the checker's are noise to them)."""
    if isinstance(e, NotImplementedError):
        return f"{e}: open {path} and replace the raise with your code"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    where = "".join(traceback.format_list(frames[-3:]))
    return f"{type(e).__name__}: {e}\n{where}".rstrip()


def main(argv: list[str]) -> int:
    ex_id, path, seed = argv[0], Path(argv[1]), int(argv[2])
    exercise = find(ex_id)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng([seed, size])  # the same cases on every rank
    try:
        module = load(path)
        print0(f"  on {size} rank{'s' if size > 1 else ''}" if size > 1 else "  in one process")
        strict = StrictComm(comm)
        for description, failure in exercise.check(module, strict, rng):
            unfinished = len(strict.ledger.unfinished())
            if unfinished and not failure:
                failure = (f"{unfinished} request{'s' if unfinished > 1 else ''} never completed: a non-blocking "
                           "call (Isend, Irecv, ...) returns a request, and MPI may still be using its buffer until "
                           "you Wait on it (req.Wait() or MPI.Request.Waitall(requests)) before returning")
            strict.ledger.forget()
            failures = comm.allgather(failure)
            wrong = [(r, f) for r, f in enumerate(failures) if f]
            if wrong:
                r, f = wrong[0]
                others = f" (and {len(wrong) - 1} more rank{'s' if len(wrong) > 2 else ''})" if len(wrong) > 1 else ""
                print0(f"  FAIL {description} on {size} rank{'s' if size > 1 else ''}\n       rank {r}{others}: {f}")
                if comm.allreduce(unfinished):
                    abort(1)  # MPI_Finalize may wait for those requests
                return 1
            print0(f"  ok   {description}")
    except Exception as e:  # noqa: BLE001 -- the learner's code: say what it raised, then end every rank
        if rank == 0 or not isinstance(e, NotImplementedError):
            print(f"  FAIL rank {rank} of {size}: {_learner_error(e, path)}", flush=True)
        else:  # an unwritten stub raises on every rank: rank 0 says it and ends the job; the others give it time to
            time.sleep(STUB_GRACE_S)  # (it may still be importing torch), and end the job themselves if it never does
        abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
