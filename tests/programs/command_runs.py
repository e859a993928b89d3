"""Run under mpiexec -n K with a JSON file of command lines: each runs as ``python -m parallel_lm.CMD ARGS`` would,
one after another in the same K processes, so the job imports torch once instead of once per run.

    mpiexec -n 4 python tests/programs/command_runs.py runs.json
    # runs.json: [{"key": "...", "args": ["-m", "parallel_lm.train", "--steps", "2"]}, ...]

For each run every rank calls the command's click ``main`` with its output captured; a bad flag ends that run
with its exit code (2) and its message as it would end the process (runtime.main_guard, click's standalone
mode). Rank 0 prints ``START key`` before a run and ``RUN {"key", "code", "stdout", "stderr"}`` after it: stdout
is rank 0's (print0 speaks there), stderr every rank's that wrote any. A run that hangs (a rank stuck in a
collective) ends the whole job at the launcher's timeout; the last START names it.
"""
import contextlib
import importlib
import io
import json
import sys
import traceback

import click
from mpi4py import MPI

from parallel_lm.runtime import start_script, quiet_barrier

start_script()
comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def command(module: str) -> click.Command:
    """The click command that ``python -m MODULE`` runs: MODULE's ``main``, or its package's __main__'s."""
    found = importlib.import_module(module)
    return (importlib.import_module(f"{module}.__main__") if hasattr(found, "__path__") else found).main


def run(args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) on this rank of ``-m MODULE ARGS...``: MODULE's click command ``main``."""
    assert args[0] == "-m", f"a command line here is -m parallel_lm.CMD ARGS, not {args}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            command(args[1]).main(args=args[2:], prog_name=f"python -m {args[1]}", standalone_mode=False)
            code = 0
        except click.ClickException as e:  # what main_guard and click do: rank 0 shows it, every rank exits
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
