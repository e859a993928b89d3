"""python -m parallel_lm.elastic: when a training job dies, restart it on the survivors, under any MPI.

    python -m parallel_lm.elastic --ranks 4 --min-ranks 2 -- --steps 400 --ckpt-every 20 --out runs/e

Launches ``mpiexec -n N python -m parallel_lm.train FLAGS``. Under MPICH
(and any MPI without fault tolerance) one dead rank ends the whole job; the
checkpoint written before stays intact. When the job ends without
finishing (a rank killed, an exception, the hang watchdog), this relaunches
it from the newest intact checkpoint in OUT with one rank fewer per
failure (or the next multiple of tp x pp below; ``--same-size``: as many
ranks), until the run reaches its
``--steps``, the ranks would fall below ``--min-ranks``, or
``--max-restarts`` are spent. A global batch that no longer divides over
the ranks is split unevenly and weighted exactly (config.py), so the
survivors train what the full job would have.

Each failure is logged on stdout and appended to OUT/recovery.jsonl: the
time, the step the job had completed, the checkpoint step it restarts
from (the steps in between are lost: at most --ckpt-every), the ranks
before and after, and the seconds from the job's end to the restarted
job's resumption.

``--cluster NAME``: each job is launched across the live nodes of a cluster on this machine (python -m
parallel_lm.cluster run), and after a failure restarts on the ranks of the nodes still live (a lost node takes
all of its ranks; docs/cluster.md). A job that exits 0 short of its --steps counts as failed: Open MPI's
launcher exits 0 after losing a node's daemon.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from .services import checkpoint
from .services.metrics import completed_step
from . import environment


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one), or None."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _target_steps(flags: list[str]) -> int:
    """The --steps the run is to reach."""
    from .config import TrainConfig
    return int(_flag(flags, "--steps") or TrainConfig.steps)


def _intact_step(out: Path) -> int | None:
    """The step of the newest intact checkpoint in ``out`` (saying so when it falls back), None when there is none."""
    if not checkpoint.available(out):
        return None
    try:
        return checkpoint.load(out, on_fallback=lambda m: print(f"[elastic] {m}", flush=True))["step"]
    except ValueError as e:
        print(f"[elastic] {e}; no intact checkpoint left: starting from scratch", flush=True)
        return None


def _launcher(mpiexec: str, ranks: int, cluster: str | None) -> list[str]:
    """What starts ``ranks`` ranks of a Python command: mpiexec here, or across the live nodes of ``cluster``
    (python -m parallel_lm.cluster run)."""
    if cluster is None:
        return [mpiexec, "-n", str(ranks)]
    return [sys.executable, "-m", "parallel_lm.cluster", "run", "--name", cluster, "--mpiexec", mpiexec,
            "-n", str(ranks), "--"]


def _launch(launcher: list[str], flags: list[str], out: Path, resume: bool, failed_at: float | None = None
            ) -> tuple[int, float | None]:
    """Run one job, its output passed through; (exit code, time.monotonic() when it resumed from a checkpoint).
    ``failed_at``: when the job before it ended, to say how long the recovery took as soon as it has."""
    resume = ["--resume", str(out)] if resume else []
    cmd = [*launcher, sys.executable, "-m", "parallel_lm.train", *flags, *resume]
    print(f"[elastic] {' '.join(launcher)} ... {' '.join(flags + resume)}", flush=True)
    resumed = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if resumed is None and line.startswith("resumed from"):
                resumed = time.monotonic()
                if failed_at is not None:
                    print(f"[elastic] recovered in {resumed - failed_at:.1f} s (job end to resumption)", flush=True)
        sys.stdout.flush()
    return proc.returncode, resumed


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ranks", type=click.IntRange(min=1), help="Ranks of the first launch (with --cluster, default: "
              "every rank of its nodes).")
@click.option("--min-ranks", default=1, type=click.IntRange(min=1), help="Give up rather than run on fewer ranks.")
@click.option("--max-restarts", default=3, type=click.IntRange(min=0), help="Give up after this many restarts.")
@click.option("--same-size", is_flag=True, help="Restart on as many ranks as before (a replaced node), not one fewer.")
@click.option("--mpiexec", default=None, help="The MPI launcher (default: $PARALLEL_LM_MPIEXEC, else the one in "
              "this Python's environment, else PATH's).")
@click.option("--cluster", default=None, help="Launch across the live nodes of this cluster (python -m "
              "parallel_lm.cluster up --name NAME), and after a failure restart on the nodes still live.")
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
def main(ranks, min_ranks, max_restarts, same_size, mpiexec, cluster, flags):
    """Run python -m parallel_lm.train FLAGS (after --) and restart it from its newest intact checkpoint on the
    surviving ranks whenever it dies. FLAGS must include --out DIR; give --ckpt-every N too, or a failure loses
    every step since the start."""
    flags = list(flags)
    mpiexec = mpiexec or environment.default_mpiexec() or "mpiexec"
    if cluster is not None:
        ranks = ranks or _cluster_ranks(cluster)
    elif ranks is None:
        raise click.UsageError("give --ranks N (or --cluster NAME to run on a cluster's nodes)")
    out = _flag(flags, "--out")
    if out is None:
        raise click.UsageError("give the train flags after --, including --out DIR: the checkpoints to restart "
                               "from go there (e.g. -- --steps 400 --ckpt-every 20 --out runs/e)")
    if min_ranks > ranks:
        raise click.UsageError(f"--min-ranks {min_ranks} is more than --ranks {ranks}")
    if not Path(mpiexec).exists() and os.sep in mpiexec:
        raise click.UsageError(f"no MPI launcher at {mpiexec}: pass --mpiexec (e.g. mpiexec from PATH)")
    out = Path(out)
    if _flag(flags, "--ckpt-every") in (None, "0"):
        print("[elastic] no --ckpt-every: a failure restarts from the last checkpoint written, or from scratch",
              flush=True)
    restarts, started, pending = 0, time.monotonic(), None
    step = _intact_step(out)  # a folder with a checkpoint: continue it
    if step is not None:
        print(f"[elastic] {out} holds a checkpoint at step {step}: continuing it (remove {out}, or pass another "
              "--out, to start over)", flush=True)
    target = _target_steps(flags)
    while True:
        code, resumed = _launch(_launcher(mpiexec, ranks, cluster), flags, out, step is not None,
                                pending[0] if pending else None)
        if pending:  # the failure before this launch, with the time it took to resume
            failed_at, entry = pending
            entry["recovery_s"] = None if resumed is None else round(resumed - failed_at, 2)
            _log(out, entry)
            pending = None
        done = completed_step(out)
        if code == 0 and done < target:
            # Open MPI's launcher (PRRTE 5) exits 0 after losing a node's daemon: a job that stopped short failed
            print(f"[elastic] the job exited 0 after step {done} of {target}: counted as a failure", flush=True)
            code = -1
        if code == 0:
            print(f"[elastic] done: {restarts} restart(s), {time.monotonic() - started:.1f} s, {ranks} rank(s) at "
                  "the end", flush=True)
            return
        failed_at = time.monotonic()
        step = _intact_step(out)
        if cluster is not None:  # the nodes still live decide: a lost node takes all its ranks
            after = _whole(min(ranks, _cluster_ranks(cluster)), flags)
        else:
            after = ranks if same_size else _fewer(ranks, flags)
        flags = _with_dp(flags, after)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "exit": code, "completed_step": done,
                 "restart_step": step or 0, "steps_lost": max(0, done - (step or 0)), "ranks_before": ranks,
                 "ranks_after": after}
        print(f"[elastic] {entry['time']}: the job on {ranks} rank(s) ended with exit {code} after step {done}; ",
              end="", flush=True)
        if restarts >= max_restarts or after < min_ranks:
            why = f"--max-restarts {max_restarts} spent" if restarts >= max_restarts else \
                f"{after} rank(s) would be fewer than --min-ranks {min_ranks}"
            print(f"giving up: {why}", flush=True)
            _log(out, {**entry, "ranks_after": None, "gave_up": why})
            sys.exit(1)
        print(f"restarting on {after} rank(s) from step {step or 0} ({entry['steps_lost']} completed step(s) lost)",
              flush=True)
        ranks, restarts, pending = after, restarts + 1, (failed_at, entry)


def _model_parallel(flags: list[str]) -> int:
    """cp x tp x pp of the train flags: the ranks one data-parallel share of the batch needs."""
    return int(_flag(flags, "--cp") or 1) * int(_flag(flags, "--tp") or 1) * int(_flag(flags, "--pp") or 1)


def _whole(ranks: int, flags: list[str]) -> int:
    """The most ranks up to ``ranks`` that hold whole replicas (a multiple of cp x tp x pp, and of ep
    data-parallel ranks when experts are spread over ep)."""
    unit = _model_parallel(flags) * int(_flag(flags, "--ep") or 1)
    return ranks // unit * unit


def _fewer(ranks: int, flags: list[str]) -> int:
    """The most ranks below ``ranks`` that hold whole replicas."""
    return _whole(ranks - 1, flags)


def _cluster_ranks(name: str) -> int:
    """The ranks of the live nodes of cluster ``name`` (UsageError when it is not up)."""
    from .cluster import state
    try:
        return state.load(name).ranks
    except state.ClusterError as e:
        raise click.UsageError(str(e)) from None


def _with_dp(flags: list[str], ranks: int) -> list[str]:
    """``flags`` with an explicit --dp set to what ``ranks`` hold (none given: none added)."""
    if _flag(flags, "--dp") is None or ranks < 1:
        return flags
    dp = str(ranks // _model_parallel(flags))
    fixed = []
    for a in flags:
        fixed.append(f"--dp={dp}" if a.startswith("--dp=") else dp if fixed and fixed[-1] == "--dp" else a)
    return fixed


def _log(out: Path, entry: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "recovery.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
