"""Helpers for tests that launch ``mpiexec -n K`` (docs/mpi-notes.md: a subprocess with a timeout
turns a deadlock into a failure)."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_lm.environment import default_mpiexec

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "programs"


def mpiexec_path() -> str:
    """``$PARALLEL_LM_MPIEXEC``, else the one beside this Python (mpich wheel), else PATH's."""
    found = default_mpiexec()
    if not found:
        pytest.fail("no mpiexec found: pip install 'parallel_lm[mpich]' or put a system MPI's mpiexec on PATH")
    return found


def mpirun(k: int, args: list[str], timeout: float = 120, env: dict | None = None,
           launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``mpiexec [LAUNCHER] -n k python ARGS`` from the repository root; output captured as text."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([mpiexec_path(), *launcher, "-n", str(k), sys.executable, *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@functools.cache
def launcher_version() -> str:
    """The first line of ``mpiexec --version`` that names it (MPICH's "Version:", Open MPI's "mpirun (Open MPI)")."""
    lines = subprocess.run([mpiexec_path(), "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    return next((line.strip() for line in lines if "version" in line.lower() or "open mpi" in line.lower()), "?")


def open_mpi() -> bool:
    return "open mpi" in launcher_version().lower()


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def cases(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    """The results a test program reported, one per case (programs/report.py), by name."""
    return {r["name"]: r for r in (json.loads(line[5:]) for line in proc.stdout.splitlines()
                                   if line.startswith("CASE "))}


def assert_cases(proc: subprocess.CompletedProcess, names) -> dict[str, dict]:
    """Every case in ``names`` was reported and passed, and the program exited 0; a failure names the cases
    missing or failed with what they measured."""
    got = cases(proc)
    missing = [n for n in names if n not in got]
    failed = {n: got[n] for n in names if n in got and not got[n]["ok"]}
    assert not missing and not failed and proc.returncode == 0, \
        f"missing: {missing}; failed: {failed}; unexpected: {sorted(set(got) - set(names))}\n{describe(proc)}"
    return got


# One launch per program and rank count: tests mark the cases they need, and the first of them to run launches every
# case that the selected tests mark for that program and rank count. Each rank's `import torch` costs seconds of CPU,
# so 23 launches of layout_equivalence.py became 7; a test still passes or fails on its own cases only.
# Command lines go the same way: the runs the selected tests mark for k ranks run one after another in one launch
# of programs/command_runs.py.
MARKERS = ["cases(program, k, *names): this test's cases of tests/programs/PROGRAM on k ranks, one launch for all",
           "runs(k, **runs): command lines (name=['-m', 'parallel_lm.CMD', ...], '{out}' for the test's folder) on k "
           "ranks, one launch for all"]
_PLAN = pytest.StashKey[dict]()
_LAUNCHED = pytest.StashKey[dict]()


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash[_LAUNCHED] = {}


def pytest_collection_modifyitems(config, items):
    plan: dict[tuple, list] = {}
    for item in items:
        for mark in item.iter_markers("cases"):
            program, k, *names = mark.args
            planned = plan.setdefault((program, k), [])
            planned += [n for n in names if n not in planned]
        for mark in item.iter_markers("runs"):
            plan.setdefault(("command_runs.py", mark.args[0], item.module.__name__), []).extend(
                (item.nodeid, name, args) for name, args in mark.kwargs.items())
    config.stash[_PLAN] = plan


SECONDS_PER_CASE = 40  # the slowest case here takes about 15 s on a quiet machine


@pytest.fixture
def marked_cases(request) -> dict[str, dict]:
    """The results of this test's ``@pytest.mark.cases`` by name, as the program reported them; a case that was not
    reported (the launch crashed or timed out) is a failed result whose "launch" says what happened."""
    launched, results = request.config.stash[_LAUNCHED], {}
    for mark in request.node.iter_markers("cases"):
        program, k, *names = mark.args
        key = (program, k)
        if key not in launched:
            planned = request.config.stash[_PLAN].get(key, names)
            try:
                proc = mpirun(k, [str(PROGRAMS / program), *planned], timeout=60 + SECONDS_PER_CASE * len(planned))
                launched[key] = (cases(proc), describe(proc))
            except subprocess.TimeoutExpired as e:
                launched[key] = ({}, f"timed out after {e.timeout:.0f} s running {planned}")
        got, launch = launched[key]
        results.update({n: got.get(n) or {"name": n, "ok": False} for n in names})
        results.update({n: {**r, "launch": f"{program} on {k} ranks: {launch}"} for n, r in results.items()
                        if not r["ok"]})
    return results


@dataclasses.dataclass
class Run:
    """One command line's result, as a process of its own would have given it."""
    returncode: int
    stdout: str
    stderr: str
    out: Path  # the test's folder, which '{out}' in its arguments stood for


@pytest.fixture
def runs(request, tmp_path_factory) -> dict[str, Run]:
    """The results of this test's ``@pytest.mark.runs`` by name; every run of the launch shares its fate if the
    launch times out (the message names the run it was in). One launch per rank count and test module; a module
    may define a fixture ``run_files`` ({name: path}) for '{name}' in its arguments."""
    launched, results = request.config.stash[_LAUNCHED], {}
    for mark in request.node.iter_markers("runs"):
        k = mark.args[0]
        key = ("command_runs.py", k, request.module.__name__)
        if key not in launched:
            files = request.getfixturevalue("run_files") if "run_files" in request.fixturenames else {}
            launched[key] = _launch_runs(k, request.config.stash[_PLAN][key], tmp_path_factory, files)
        results.update({name: launched[key][f"{request.node.nodeid} {name}"] for name in mark.kwargs})
    return results


def _launch_runs(k: int, planned: list, tmp_path_factory, files: dict) -> dict[str, Run]:
    """Every planned run's result by "NODEID NAME"; a run the launch never finished is a Run with exit -1 whose
    stderr says how the launch ended (a crash, or the timeout and the run it was in)."""
    base = tmp_path_factory.mktemp(f"runs-{k}")
    folders = {nodeid: base / f"{i}" for i, nodeid in enumerate(dict.fromkeys(n for n, _, _ in planned))}

    def filled(arg: str, nodeid: str) -> str:
        for name, path in {**files, "out": folders[nodeid]}.items():
            arg = arg.replace(f"{{{name}}}", str(path))
        return arg

    runs = [{"key": f"{nodeid} {name}", "args": [filled(a, nodeid) for a in args]} for nodeid, name, args in planned]
    (base / "runs.json").write_text(json.dumps(runs))
    try:
        proc = mpirun(k, [str(PROGRAMS / "command_runs.py"), str(base / "runs.json")],
                      timeout=60 + SECONDS_PER_CASE * len(runs))
        stdout, ended = proc.stdout, f"not run: the launch ended first\n{describe(proc)}"
    except subprocess.TimeoutExpired as e:
        stdout = (e.stdout or b"").decode(errors="replace")
        started = [ln[6:] for ln in stdout.splitlines() if ln.startswith("START ")]
        stdout, ended = "", f"the launch of {len(runs)} runs on {k} ranks timed out in {started[-1:] or 'its start'}"
    got = {}
    for line in stdout.splitlines():
        if line.startswith("RUN "):
            r = json.loads(line[4:])
            got[r["key"]] = Run(r["code"], r["stdout"], r["stderr"], folders[r["key"].rsplit(" ", 1)[0]])
    for nodeid, name, _ in planned:
        got.setdefault(f"{nodeid} {name}", Run(-1, "", ended, folders[nodeid]))
    return got


def check_cases(results: dict[str, dict]) -> dict[str, dict]:
    """Every case passed; a failure names each failed case with what it measured and how its launch ended."""
    failed = [r for r in results.values() if not r["ok"]]
    assert not failed, "\n\n".join(f"{r['name']} failed: {r}" for r in failed)
    return results


def noise_tolerance(train_args: list[str]) -> float:
    """programs/noise.py's tolerance for a command-line run: ``python -m parallel_lm.train TRAIN_ARGS`` on one
    process, whole and accumulated in 2, 3 and 4 micro-batches (this machine's fp32 noise floor, times FACTOR),
    measured in one launch by programs/noise_floor.py."""
    proc = mpirun(1, [str(PROGRAMS / "noise_floor.py"), *train_args])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TOLERANCE ")]
    assert proc.returncode == 0 and lines, describe(proc)
    return float(lines[-1].split()[1])


def pytest_report_header(config):
    """Which MPI the tests launch (MPICH or Open MPI), in the first lines of the run."""
    return f"mpiexec: {mpiexec_path()} ({launcher_version()})"
