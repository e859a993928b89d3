"""How entry points behave under mpiexec: one voice, and failures end the whole job."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, describe, mpiexec_path, mpirun


def test_failed_self_check_ends_every_rank_non_zero():
    proc = mpirun(3, ["-c", "from parallel_lm.runtime import check, rank; import time; "
                            "check(rank() != 1, 'rank 1 disagrees'); time.sleep(30)"], timeout=20)
    assert proc.returncode != 0 and "[rank 1] CHECK FAILED: rank 1 disagrees" in proc.stderr, describe(proc)


def test_print0_speaks_once_unless_all_ranks_asked():
    code = "from parallel_lm import environment; from parallel_lm.runtime import print0; environment.apply(); " \
           "print0('hello\\nworld')"
    proc = mpirun(3, ["-c", code])
    assert proc.returncode == 0 and proc.stdout == "hello\nworld\n", describe(proc)
    proc = mpirun(3, ["-c", code], env={"PARALLEL_LM_ALL_RANKS": "1"})
    lines = sorted(proc.stdout.splitlines())
    assert lines == sorted(f"[rank {r}] {w}" for r in range(3) for w in ("hello", "world")), describe(proc)


def test_uncaught_exception_in_a_click_command_aborts_all_ranks():
    code = ("import click, time; from parallel_lm.runtime import main_guard, rank\n"
            "@click.command()\ndef main():\n    if rank() == 1: raise KeyError('boom')\n    time.sleep(30)\n"
            "main_guard(main)")
    proc = mpirun(3, ["-c", code], timeout=20)
    assert proc.returncode != 0 and "[rank 1] fatal error, aborting all ranks" in proc.stderr, describe(proc)
    assert "KeyError: 'boom'" in proc.stderr, describe(proc)


# one line per rank, printed by rank 0 (lines printed by two ranks at once can interleave)
NODE_SHARE = ("import os; from mpi4py import MPI; from parallel_lm.runtime import node_share; c = MPI.COMM_WORLD; "
              "rows = c.gather((c.rank, len(os.sched_getaffinity(0)), *node_share(c))); "
              "c.rank == 0 and print('\\n'.join(' '.join(map(str, r)) for r in rows))")


def test_node_share_counts_the_cores_all_local_ranks_cover():
    proc = mpirun(2, ["-c", NODE_SHARE])
    assert proc.returncode == 0, describe(proc)
    assert len(proc.stdout.splitlines()) == 2, describe(proc)
    for line in proc.stdout.splitlines():
        _, own, ranks, cores = map(int, line.split())
        assert ranks == 2 and cores == own  # unbound: every rank sees every core


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding two ranks to cores needs two cores")
def test_node_share_takes_the_union_when_the_launcher_binds_ranks_to_cores():
    proc = subprocess.run([mpiexec_path(), "-bind-to", "core", "-n", "2", sys.executable, "-c", NODE_SHARE],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    if proc.returncode != 0 and "bind-to" in proc.stderr + proc.stdout:
        pytest.skip("this mpiexec has no -bind-to core (MPICH's hydra has)")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2, describe(proc)
    for line in proc.stdout.splitlines():
        _, own, ranks, cores = map(int, line.split())
        assert own == 1 and ranks == 2 and cores == 2, describe(proc)
