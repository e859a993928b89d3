"""python -m parallel_lm.exercises: graded exercises, one or more per lesson.

    python -m parallel_lm.exercises list
    python -m parallel_lm.exercises start 03.1          # writes my_exercises/ex03_1_ring_allreduce.py
    python -m parallel_lm.exercises check 03.1          # runs it under mpiexec on 3 and 5 ranks
    python -m parallel_lm.exercises check 03.1 --reference
    python -m parallel_lm.exercises status

``check`` launches ``mpiexec -n K`` for each of the exercise's rank counts
(ones the lessons do not run), on sizes and seeds drawn afresh each time
(``--seed`` repeats a run), and compares with the MPI library or one
process; where cost is the point it also counts messages or times the
simulator against the formula. A pass is recorded in the folder's
.progress.json, which ``status`` reads.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click

from .. import environment
from ..environment import default_mpiexec
from .catalog import EXERCISES, find
from .stubs import make_stub

SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}
FOLDER = click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("my_exercises"),
                      help="your exercise folder")


def _exercise(ctx, param, value):
    try:
        return find(value)
    except KeyError as e:
        raise click.BadParameter(e.args[0]) from None


EXERCISE = click.argument("exercise", callback=_exercise, metavar="ID")


def _progress(folder: Path) -> dict:
    path = folder / ".progress.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record_pass(folder: Path, exercise, seed: int) -> None:
    progress = _progress(folder)
    progress[exercise.id] = {"passed": time.strftime("%Y-%m-%d %H:%M:%S"), "seed": seed}
    tmp = folder / ".progress.json.tmp"
    tmp.write_text(json.dumps(progress, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / ".progress.json")


def _state(folder: Path, exercise, progress: dict) -> str:
    if exercise.id in progress:
        return "passed"
    return "started" if (folder / exercise.filename).exists() else ""


@click.group(context_settings=SETTINGS)
def main():
    """Graded exercises: start one, write it, check it on cases you have not seen."""


@main.command("list", short_help="Every exercise, and your progress.")
@FOLDER
def list_(folder):
    """Every exercise: ID, lesson, what it asks, the rank counts it is checked on, your progress."""
    progress = _progress(folder)
    for e in EXERCISES:
        ranks = ", ".join(map(str, e.ranks))
        how = f"{'1 process' if e.ranks == (1,) else f'ranks {ranks}'}{' + cost' if e.checks_cost else ''}"
        click.echo(f"{e.id}  lesson {e.lesson}  {e.title:<66} {how:<20} {_state(folder, e, progress)}".rstrip())


@main.command(short_help="Write exercise ID's task into your folder.")
@EXERCISE
@FOLDER
@click.option("--force", is_flag=True, help="overwrite a file you already started")
def start(exercise, folder, force):
    """Copy exercise ID's starting file into your folder; its docstring says what to write."""
    target = folder / exercise.filename
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists: edit it and run `check {exercise.id}`, or pass --force to "
                                   "start over")
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(make_stub(exercise.solution.read_text(), exercise.id))
    click.echo(f"wrote {target}\nwrite the function(s) in it, then: python -m parallel_lm.exercises check {exercise.id}")


def _launch(mpiexec: str, exercise, path: Path, ranks: int, seed: int, timeout_s: float) -> bool:
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "parallel_lm.exercises.harness", exercise.id, str(path),
           str(seed)]
    # Its own process group, so that a hang can be killed whole: mpiexec and every rank.
    proc = subprocess.Popen(cmd, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        return proc.wait(timeout=timeout_s) == 0
    except BaseException as e:  # the timeout, or Ctrl-C (which the ranks in their own group do not get)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        click.echo(f"  FAIL no answer after {timeout_s:g} s on {ranks} ranks: a rank waits for a message "
                   "that is never sent (a Recv without its Send, every rank in Send before any Recv, or ranks "
                   "calling different collectives)")
        return False


@main.command(short_help="Check your solution on cases you have not seen.")
@EXERCISE
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="check this file instead of the one in your folder")
@click.option("--reference", is_flag=True, help="check the project's own solution (it must pass)")
@click.option("--seed", type=int, default=None, help="repeat the cases of an earlier run (each run draws new ones)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=None,
              help="seconds per launch before a hang is called a hang [default: the exercise's, 90]")
@FOLDER
def check(exercise, path, reference, seed, timeout_s, folder):
    """Run exercise ID under mpiexec on rank counts and cases you have not seen; exit 1 with a hint if wrong."""
    path = exercise.solution if reference else path or folder / exercise.filename
    if not path.exists():
        raise click.ClickException(f"no file {path}: run `python -m parallel_lm.exercises start {exercise.id}` first")
    mpiexec = default_mpiexec()
    if not mpiexec:
        raise click.ClickException("no mpiexec: pip install 'parallel_lm[mpich]', put an MPI's mpiexec on PATH, "
                                   "or set PARALLEL_LM_MPIEXEC")
    seed = random.randrange(1 << 31) if seed is None else seed
    click.echo(f"exercise {exercise.id}: {exercise.title}\nchecking {path} on {', '.join(map(str, exercise.ranks))} "
               f"rank(s), seed {seed}")
    click.echo(textwrap.fill(" ".join(exercise.check.__doc__.split()), width=100, initial_indent="checks: ",
                             subsequent_indent="        "))
    for ranks in exercise.ranks:
        if not _launch(mpiexec, exercise, path, ranks, seed, timeout_s or exercise.timeout_s):
            click.echo(f"exercise {exercise.id} FAILED (rerun these cases with --seed {seed})")
            sys.exit(1)
    click.echo(f"exercise {exercise.id} PASSED")
    if not reference:
        folder.mkdir(parents=True, exist_ok=True)
        _record_pass(folder, exercise, seed)


@main.command(short_help="Your progress through the course.")
@FOLDER
def status(folder):
    """Your progress: passed, started and untouched exercises, lesson by lesson."""
    progress = _progress(folder)
    done = [e for e in EXERCISES if e.id in progress]
    width = shutil.get_terminal_size((80, 20)).columns
    bar = int(min(40, width - 30) * len(done) / len(EXERCISES))
    click.echo(f"{len(done)} of {len(EXERCISES)} exercises passed  [{'#' * bar}{'.' * (min(40, width - 30) - bar)}]")
    for e in EXERCISES:
        state = _state(folder, e, progress)
        mark = {"passed": "[x]", "started": "[~]"}.get(state, "[ ]")
        when = f"  passed {progress[e.id]['passed']}" if state == "passed" else ""
        click.echo(f"{mark} {e.id}  {e.title}{when}")
    todo = next((e for e in EXERCISES if e.id not in progress), None)
    if todo:
        verb = "check" if _state(folder, todo, progress) == "started" else "start"
        click.echo(f"next: python -m parallel_lm.exercises {verb} {todo.id}")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
