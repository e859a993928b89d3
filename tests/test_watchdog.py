"""--timeout: a rank that stops making progress ends the job within the timeout plus a few seconds, named."""
import subprocess
import sys
import time

from conftest import describe, mpirun

TRAIN = ["-m", "parallel_lm.train", "--steps", "200", "--eval-every", "0", "--quiet", "--timeout", "4"]


def run_failing(k, how, *args):
    t0 = time.monotonic()
    proc = mpirun(k, TRAIN + list(args), timeout=90, env={"PARALLEL_LM_FAIL_AT": how})
    return proc, time.monotonic() - t0


def test_a_stopped_rank_is_named_and_the_job_ends():
    """On a busy machine (two processes spinning beside the 3 ranks on 2 cores), the stopped rank, woken by the
    launcher's SIGCONT before its kill, once named the others as silent too: two "watchdog:" lines."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        proc, seconds = run_failing(3, "1:3:stop", "--global-batch-size", "6")
    finally:
        for hog in hogs:
            hog.kill()
    assert proc.returncode == 3, describe(proc)
    assert "watchdog: no heartbeat for 4 s from rank 1 (last heard:" in proc.stderr, describe(proc)
    assert proc.stderr.count("watchdog:") == 1 and seconds < 60, (seconds, describe(proc))


def test_a_rank_stuck_in_its_main_thread_is_named_with_its_operation_and_step():
    proc, seconds = run_failing(4, "2:3:hang")
    assert proc.returncode == 3, describe(proc)
    assert ("watchdog: no progress for 4 s: rank 2 stuck in forward/backward at step 4, ranks 0, 1, 3 waiting "
            "for it") in proc.stderr, describe(proc)
    assert proc.stderr.count("watchdog:") == 1 and seconds < 60, (seconds, describe(proc))


def test_a_stuck_parameter_server_worker_is_named_too():
    proc, seconds = run_failing(3, "2:3:hang", "--sync", "ps", "--global-batch-size", "4")
    assert proc.returncode == 3, describe(proc)
    assert "watchdog: no progress for 4 s: rank 2 stuck in forward/backward at step 4, ranks 0, 1 waiting for it" \
        in proc.stderr, describe(proc)


def test_a_healthy_run_with_evaluations_and_checkpoints_never_trips_it(tmp_path):
    proc = mpirun(4, ["-m", "parallel_lm.train", "--steps", "20", "--eval-every", "5", "--ckpt-every", "5", "--quiet",
                      "--timeout", "10", "--pp", "2", "--micro-batches", "2", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0 and "watchdog" not in proc.stderr, describe(proc)
