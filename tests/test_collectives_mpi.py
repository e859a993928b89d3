"""Every collective x algorithm x dtype x length against the MPI library, on K ranks."""
import pytest

from conftest import PROGRAMS, assert_cases, describe, mpirun
from parallel_lm.comm import ALGORITHMS, ALL_GATHER_ALGORITHMS, BROADCAST_ALGORITHMS, REDUCE_SCATTER_ALGORITHMS


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])
def test_all_collectives_match_library_and_agree_bitwise(k):
    proc = mpirun(k, [str(PROGRAMS / "check_collectives.py")], timeout=300)
    ops = (("allreduce", ALGORITHMS), ("reduce_scatter", REDUCE_SCATTER_ALGORITHMS),
           ("all_gather", ALL_GATHER_ALGORITHMS), ("broadcast", BROADCAST_ALGORITHMS))
    names = [f"{op} {a}" for op, algorithms in ops for a in algorithms]
    assert_cases(proc, names + ["allreduce_mean ring"])


def test_consistency_check_catches_mismatched_lengths():
    proc = mpirun(3, [str(PROGRAMS / "mismatch.py")], env={"PARALLEL_LM_CHECK": "1"}, timeout=60)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.count("caught: ranks called allreduce inconsistently (length 10..11") == 3, describe(proc)


def test_exception_on_one_rank_aborts_the_job_instead_of_hanging():
    proc = mpirun(4, [str(PROGRAMS / "crash_one_rank.py")], timeout=60)
    assert proc.returncode != 0, describe(proc)
    assert "fatal error, aborting all ranks" in proc.stderr and "rank 2 fails on purpose" in proc.stderr, describe(proc)


def test_trace_prints_every_ring_message():
    proc = mpirun(4, ["-c", "import numpy as np; from parallel_lm import environment; from parallel_lm.comm import allreduce; "
                            "environment.apply(); allreduce(np.ones(8, np.float32))"],
                  env={"PARALLEL_LM_TRACE": "1"}, timeout=60)
    assert proc.returncode == 0, describe(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[trace]")]
    # ring: (p-1) reduce-scatter + (p-1) all-gather Sendrecvs on each of 4 ranks
    assert len(lines) == 4 * 2 * 3, describe(proc)
    assert "[trace] rank 0 -> 1  8 B | rank 0 <- 3  8 B  (Sendrecv)" in lines, describe(proc)
