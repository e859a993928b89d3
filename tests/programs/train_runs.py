"""Run under mpiexec -n K with a JSON file of train command lines: each runs as ``python -m parallel_lm.train ARGS``
would, one after another in the same K processes, so the job imports torch once instead of once per run.

    mpiexec -n 4 python tests/programs/train_runs.py runs.json     # [{"key": "...", "args": ["--steps", "2"]}, ...]

For each run every rank calls the train command (``parallel_lm.train.main``) with its output captured; a bad flag
ends that run with its exit code (2) as it would end the process. Rank 0 prints ``START key`` before a run and
``RUN {"key", "code", "stdout", "stderr"}`` after it: stdout is rank 0's (print0 speaks there), stderr every rank's
that wrote any. A run that hangs (a rank stuck in a collective) ends the whole job at the launcher's timeout; the
last START names it.
"""
import contextlib
import io
import json
import sys
import traceback

import click
from mpi4py import MPI

from parallel_lm.runtime import install_abort_hook, quiet_barrier
from parallel_lm.train import main

install_abort_hook()
comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def run(args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the train command with ``args`` on this rank."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main.main(args=args, standalone_mode=False)
            code = 0
        except click.ClickException as e:  # what runtime.main_guard does: rank 0 shows it, every rank exits
            if rank == 0:
                e.show()
            code = e.exit_code
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 -- recorded as the process would print it, with exit 1
            err.write(f"[rank {rank}] fatal error, aborting all ranks:\n{traceback.format_exc()}")
            code = 1
    return code, out.getvalue(), err.getvalue()


for item in json.loads(open(sys.argv[1]).read()):
    if rank == 0:
        print(f"START {item['key']}", flush=True)
    results = comm.gather(run(item["args"]), root=0)
    quiet_barrier(comm)
    if rank == 0:
        stderr = "".join(e if r == 0 else "".join(f"[rank {r}] {line}\n" for line in e.splitlines())
                         for r, (_, _, e) in enumerate(results) if e)
        print("RUN " + json.dumps({"key": item["key"], "code": max(c for c, _, _ in results),
                                   "stdout": results[0][1], "stderr": stderr}), flush=True)
