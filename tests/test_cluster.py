"""A real cluster on this machine (python -m parallel_lm.cluster): nodes as network namespaces, MPI across them.

Each test brings up its own cluster under a name of its own and takes it down in a ``finally``, and checks
that nothing of it is left: no namespace, no keeper process, no state file. The MPI under test is the one
the suite runs (MPICH, or Open MPI in its own venv).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PROGRAMS, ROOT, cases, check_cases, describe, mpiexec_path, open_mpi

from parallel_lm.cluster import nodes, state
from parallel_lm.services import checkpoint
from parallel_lm.services.metrics import completed_step


def can_make_namespaces() -> str | None:
    """None when this machine can build a cluster (root, or user namespaces), else why not."""
    if not all(map(__import__("shutil").which, ("ip", "tc", "unshare", "nsenter"))):
        return "ip, tc, unshare or nsenter is missing"
    if os.geteuid() == 0:
        return None
    probe = subprocess.run(["unshare", "-r", "-n", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"not root and no user namespaces: {probe.stderr.strip()}"


pytestmark = pytest.mark.skipif(can_make_namespaces() is not None, reason=str(can_make_namespaces()))


def cluster_cmd(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m parallel_lm.cluster ARGS`` from the repository root, with this suite's mpiexec."""
    env = dict(os.environ, PARALLEL_LM_MPIEXEC=mpiexec_path(), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "parallel_lm.cluster", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def listed_namespaces() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.splitlines() if line.strip()}


@contextlib.contextmanager
def cluster(name: str, *up_args: str):
    """A cluster up for the block, always taken down after it (and checked gone)."""
    up = cluster_cmd("up", "--name", name, *up_args)
    assert up.returncode == 0, describe(up)
    made = state.load(name)
    try:
        yield made
    finally:
        down = cluster_cmd("down", "--name", name)
        assert down.returncode == 0, describe(down)
        assert_gone(made)


def assert_gone(made: state.Cluster) -> None:
    assert not [ns for ns in listed_namespaces() if ns.startswith(made.prefix)]
    assert not state.state_file(made.name).exists() and not state.agent_path(made).exists()
    assert made.keeper is None or not nodes.alive(made.keeper)


def run_cases(name: str, program: str, *args: str, timeout: float = 300) -> dict[str, dict]:
    proc = cluster_cmd("run", "--name", name, "--timeout", str(timeout), "--", "python", str(PROGRAMS / program),
                       *args, timeout=timeout + 60)
    got = cases(proc)
    assert got and proc.returncode == 0, describe(proc)
    return got


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_a_cluster_comes_up_runs_and_leaves_nothing_behind_after_a_killed_run(rootless):
    if not rootless and os.geteuid() != 0:
        pytest.skip("the root cluster needs root")
    name = f"t-life-{'rootless' if rootless else 'root'}"
    up = cluster_cmd("up", "--name", name, "--nodes", "2", "--ranks-per-node", "1", "--link", "100mbit",
                     *(["--rootless"] if rootless else []))
    assert up.returncode == 0, describe(up)
    made = state.load(name)
    try:
        if not rootless:  # root's namespaces are the host's to see; rootless ones live inside the keeper only
            assert set(made.made) <= listed_namespaces()
        status = cluster_cmd("status", "--name", name)
        assert status.returncode == 0 and all(node in status.stdout for node in made.nodes), describe(status)
        hostnames = cluster_cmd("run", "--name", name, "--", "sh", "-c", "echo $(hostname) $(taskset -pc $$)")
        assert hostnames.returncode == 0, describe(hostnames)
        seen = sorted(line.split()[0] for line in hostnames.stdout.splitlines())
        assert seen == made.nodes, describe(hostnames)  # each node its own hostname
        if len(os.sched_getaffinity(0)) >= 2:  # and its own CPUs: the machine's cut in two
            cpus = {line.split()[0]: line.split()[-1] for line in hostnames.stdout.splitlines()}
            assert [cpus[n] for n in made.nodes] == made.cpus and len(set(made.cpus)) == 2, describe(hostnames)
        # a run killed from outside (as a scheduler would) leaves its ranks in the nodes: down must remove them
        env = dict(os.environ, PARALLEL_LM_MPIEXEC=mpiexec_path())
        killed = subprocess.Popen([sys.executable, "-m", "parallel_lm.cluster", "run", "--name", name, "--",
                                   "sleep", "300"], cwd=ROOT, env=env, start_new_session=True)
        deadline = time.time() + 30
        while sum(map(len, nodes.processes(made).values())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert sum(map(len, nodes.processes(made).values())) >= 2, "the run never started in the nodes"
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    finally:
        down = cluster_cmd("down", "--name", name)
    assert down.returncode == 0, describe(down)
    assert_gone(made)


@pytest.mark.parametrize("args,message", [
    (["up", "--nodes", "0"], "--nodes"),
    (["up", "--nodes", "2", "--ranks-per-node", "2,1,2"], "give one count >= 1, or 2 (one per node)"),
    (["up", "--nodes", "2", "--link", "fast"], "give a rate with its unit, for example 1gbit"),
    (["run", "--name", "t-none", "--", "true"], "no cluster named 't-none' is up"),
    (["status", "--name", "t-none"], "no cluster named 't-none' is up"),
])
def test_bad_input_gets_one_clear_error(args, message):
    proc = cluster_cmd(*args)
    assert proc.returncode == 2 and message in proc.stderr, describe(proc)


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("setpriv"), reason="needs root and setpriv")
def test_without_the_capabilities_up_says_what_is_missing_and_leaves_nothing():
    """Root without CAP_NET_ADMIN and CAP_SYS_ADMIN (a container that was not given them): one clear error."""
    env, before = dict(os.environ, PARALLEL_LM_MPIEXEC=mpiexec_path()), listed_namespaces()
    proc = subprocess.run(["setpriv", "--bounding-set", "-net_admin,-sys_admin", sys.executable, "-m",
                           "parallel_lm.cluster", "up", "--name", "t-nocap", "--nodes", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--cap-add NET_ADMIN --cap-add SYS_ADMIN" in proc.stderr, describe(proc)
    assert proc.stderr.count("\n") <= 2, describe(proc)  # one line, no traceback
    assert not state.state_file("t-nocap").exists() and listed_namespaces() == before


def test_a_second_cluster_of_the_same_name_is_refused():
    with cluster("t-twice", "--nodes", "1"):
        again = cluster_cmd("up", "--name", "t-twice", "--nodes", "1")
        assert again.returncode == 2 and "already up" in again.stderr, describe(again)


def test_collectives_and_training_across_two_nodes_equal_the_library_and_one_process():
    """2 nodes x 2 ranks: every collective as the library; the hierarchical all-reduce finds the real nodes and
    puts the formula's bytes on each link; dp across nodes, tp inside a node with dp across, pp across nodes and
    torch DDP (tp inside) train as one process does."""
    with cluster("t-two", "--nodes", "2", "--ranks-per-node", "2"):
        results = {}
        results.update(run_cases("t-two", "check_collectives.py", "--quick"))
        hierarchical = run_cases("t-two", "check_hierarchical.py")
        assert hierarchical["registry"]["per_node"] == 2, hierarchical["registry"]  # the real nodes, found by MPI
        results.update(hierarchical)
        results.update(run_cases("t-two", "link_bytes.py"))
        results.update(run_cases("t-two", "layout_equivalence.py", "dp", "dp2-tp2", "pp2-1f1b", "dp2-tp2-ddp"))
    check_cases(results)
    assert {"hierarchical", "ring", "dp", "dp2-tp2", "pp2-1f1b", "dp2-tp2-ddp"} <= set(results)


def test_collectives_across_three_unequal_nodes_equal_the_library():
    """2 + 1 + 2 ranks: every collective but the hierarchical all-reduce as the library; that one refuses the
    unequal nodes with its message on every rank, and the job ends at once."""
    with cluster("t-three", "--nodes", "3", "--ranks-per-node", "2,1,2"):
        check_cases(run_cases("t-three", "check_collectives.py", "--quick", "--unequal-nodes"))
        t0 = time.time()
        refused = cluster_cmd("run", "--name", "t-three", "--timeout", "60", "--", "python", "-c",
                              "import numpy as np; from mpi4py import MPI; from parallel_lm.runtime import "
                              "start_script; from parallel_lm.comm import allreduce; start_script(); "
                              "allreduce(np.ones(8), MPI.COMM_WORLD, algorithm='hierarchical')")
        assert refused.returncode not in (0, 124) and time.time() - t0 < 30, describe(refused)
        assert "needs nodes of equal size" in refused.stderr, describe(refused)


SGD = ["--data", "synthetic", "--global-batch-size", "12", "--eval-every", "0", "--quiet", "--optimizer", "sgd"]
TOL = 1e-6  # SGD: what tests/test_shrink.py allows; measured here 1.5e-8 after a lost node (60 steps)


def one_process(out, *flags) -> dict:
    proc = subprocess.run([mpiexec_path(), "-n", "1", sys.executable, "-m", "parallel_lm.train", *flags, "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    return checkpoint.load(out)["model"]


def max_difference(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.skipif(not open_mpi(), reason="--on-failure shrink needs Open MPI's ULFM (make test-openmpi)")
def test_the_ranks_of_a_node_killed_under_shrink_leave_the_other_node_training_like_one_process(tmp_path):
    flags = ["--steps", "8", *SGD]
    want = one_process(tmp_path / "one", *flags)
    with cluster("t-shrink", "--nodes", "2", "--ranks-per-node", "2"):
        env = dict(os.environ, PARALLEL_LM_MPIEXEC=mpiexec_path(), PARALLEL_LM_FAIL_AT="2:3:kill,3:3:kill")
        proc = subprocess.run([sys.executable, "-m", "parallel_lm.cluster", "run", "--name", "t-shrink", "--timeout",
                               "120", "--launcher-args", "--with-ft ulfm", "--", "python", "-m", "parallel_lm.train",
                               *flags, "--out", str(tmp_path / "run"), "--on-failure", "shrink"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, describe(proc)
    log = [json.loads(line) for line in (tmp_path / "run" / "recovery.jsonl").read_text().splitlines()]
    assert [(e["dead"], e["steps_lost"]) for e in log] == [([2, 3], 0)], describe(proc)
    state = checkpoint.load(tmp_path / "run")
    assert state["step"] == 8 and max_difference(want, state["model"]) < TOL, max_difference(want, state["model"])


@pytest.mark.parametrize("cut_link", [False, True], ids=["daemon-killed", "machine-vanished"])
def test_a_lost_node_ends_the_job_and_elastic_goes_on_on_the_other_node_like_one_process(tmp_path, cut_link):
    """Every process of node 1 killed from outside (its launcher daemon too), or the node gone altogether (its
    link cut: only train's watchdog notices): the job ends, and parallel_lm.elastic --cluster restarts it on
    node 0 from the newest checkpoint; the model ends as one process's."""
    flags = ["--steps", "60", "--ckpt-every", "10", "--timeout", "5", *SGD]
    want = one_process(tmp_path / "one", *flags)
    out = tmp_path / "run"
    name = f"t-lost-{int(cut_link)}"
    with cluster(name, "--nodes", "2", "--ranks-per-node", "2") as made:
        env = dict(os.environ, PARALLEL_LM_MPIEXEC=mpiexec_path())
        job = subprocess.Popen([sys.executable, "-m", "parallel_lm.elastic", "--cluster", name, "--", *flags, "--out",
                                str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        deadline = time.time() + 120
        while completed_step(out) < 20 and job.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        nodes.kill_node(made, 1, cut_link)
        t_lost = time.time()
        stdout, _ = job.communicate(timeout=240)
    log = [json.loads(line) for line in (out / "recovery.jsonl").read_text().splitlines()]
    assert job.returncode == 0 and len(log) == 1, stdout[-4000:]
    assert (log[0]["ranks_before"], log[0]["ranks_after"], log[0]["restart_step"] % 10) == (4, 2, 0), log
    state = checkpoint.load(out)
    assert state["step"] == 60 and max_difference(want, state["model"]) < TOL, max_difference(want, state["model"])
    assert time.time() - t_lost < 60  # ended, restarted and finished: a lost node never hangs the job
