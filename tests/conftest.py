"""Helpers for tests that launch ``mpiexec -n K`` (docs/mpi-notes.md: a subprocess with a timeout
turns a deadlock into a failure)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_lm.runtime import default_mpiexec

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
