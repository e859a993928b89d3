"""How entry points behave under mpiexec: one voice, and failures end the whole job."""
from conftest import describe, mpirun


def test_failed_self_check_ends_every_rank_non_zero():
    proc = mpirun(3, ["-c", "from parallel_lm.runtime import check, rank; import time; "
                            "check(rank() != 1, 'rank 1 disagrees'); time.sleep(30)"], timeout=20)
    assert proc.returncode != 0 and "[rank 1] CHECK FAILED: rank 1 disagrees" in proc.stderr, describe(proc)


def test_print0_speaks_once_unless_all_ranks_asked():
    code = "from parallel_lm.runtime import print0; print0('hello\\nworld')"
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
