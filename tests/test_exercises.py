"""The graded exercises: each checker fails the untouched stub, fails plausible wrong solutions, passes the reference.

A wrong solution is the reference with one mistake a learner makes (a
mutation: old text -> new text), or a whole wrong function where the
mistake is a different algorithm. Each must fail ``check``; the reference
must pass it, and the stub must fail it without hanging.
"""
import ast
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from parallel_lm.exercises.catalog import EXERCISES, find
from parallel_lm.exercises.stubs import make_stub

SEED = 7  # fixed cases for the suite; learners get fresh ones on every run

NAIVE_REDUCE = '''
def tree_reduce(buf, comm, root=0):
    p, r = comm.Get_size(), comm.Get_rank()
    if r != root:
        comm.Send(buf, dest=root)
        return None
    acc, incoming = buf.copy(), np.empty_like(buf)
    for source in range(p):
        if source != root:
            comm.Recv(incoming, source=source)
            acc += incoming
    return acc
'''
POWER_OF_TWO_ONLY = '''
def recursive_doubling_allreduce(buf, comm):
    p, r = comm.Get_size(), comm.Get_rank()
    incoming, mask = np.empty_like(buf), 1
    while mask < p:
        partner = r ^ mask
        if partner < p:
            comm.Sendrecv(buf, dest=partner, recvbuf=incoming, source=partner)
            buf += incoming
        mask <<= 1
    return buf
'''
PLAIN_LEAST_SQUARES = '''
def fit_alpha_beta(sizes, times):
    beta, alpha = np.polyfit(sizes, times, 1)
    return max(alpha, 0.0), max(beta, 0.0)
'''
ONE_ALLREDUCE_PER_TENSOR = '''
def bucketed_allreduce(grads, comm, cap_bytes):
    for g in grads:
        comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
'''
SAVE_IN_PLACE = '''
def save_atomic(state, path):
    torch.save(state, path)
'''

LIBRARY_ALLREDUCE = '''
def hierarchical_allreduce(buf, comm, ranks_per_node):
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf
'''

# exercise -> [(why it is wrong, old text, new text[, what the checker must say])]; old None: append new, a
# replacement of the function; old and new tuples: several replacements, pairwise
WRONG = {
    "01.1": [("receives from the right instead of the left", "dest=(r + 1) % p, recvbuf=out, source=(r - 1) % p",
              "dest=(r - 1) % p, recvbuf=out, source=(r + 1) % p"),
             ("Send then Recv on every rank: a deadlock once MPI cannot buffer",
              "comm.Sendrecv(buf, dest=(r + 1) % p, recvbuf=out, source=(r - 1) % p)",
              "comm.Send(buf, dest=(r + 1) % p)\n    comm.Recv(out, source=(r - 1) % p)", "was not received within")],
    "02.1": [("naive: the root receives p - 1 messages", None, NAIVE_REDUCE),  # (a root mixed up hangs: 01.1's test)
             ("adds into the caller's buf", "acc, incoming = buf.copy(), np.empty_like(buf)",
              "acc, incoming = buf, np.empty_like(buf)", "The task does not say buf may change")],
    "03.1": [("skips the last all-gather step", "for step in range(p - 1):\n        send, recv = ring.all_gather",
              "for step in range(p - 2):\n        send, recv = ring.all_gather"),
             ("returns a new array: not in place", "    ring, offs = Ring(r, p), chunk_offsets(buf.size, p)\n",
              "    buf = buf.copy()\n    ring, offs = Ring(r, p), chunk_offsets(buf.size, p)\n", "The task says in place"),
             ("sends float32 chunks of float64 data",  # half the bytes on the wire
              ("    ring, offs = Ring(r, p)", "    return buf"),
              ("    out, buf = buf, buf.astype(np.float32)\n    ring, offs = Ring(r, p)",
               "    out[:] = buf\n    return out"),
              "the sum (MPI_Allreduce's)")],
    "04.1": [("assumes a power of two", None, POWER_OF_TWO_ONLY),
             ("returns a new array: not in place", "    incoming = np.empty_like(buf)\n    if r < 2",
              "    buf, incoming = buf.copy(), np.empty_like(buf)\n    if r < 2", "The task says in place")],
    "05.1": [("unweighted least squares, clipped", None, PLAIN_LEAST_SQUARES)],
    "06.1": [("forgets to divide by K", "        grad /= p\n", "")],
    "07.1": [("one all-reduce per tensor", None, ONE_ALLREDUCE_PER_TENSOR),
             ("sums a concatenated copy and never copies it back", "                g[:] = flat[at:at + g.size]\n", "",
              "gradient 0's sum")],
    "08.1": [("averages over p, server included", "total / (p - 1)", "total / p")],
    "09.1": [("forgets to sum the partial products", "    comm.Allreduce(MPI.IN_PLACE, y, op=MPI.SUM)\n", "")],
    "10.1": [("drops the last micro-batch", "for x in micro_batches:", "for x in micro_batches[:-1]:"),
             ("Isend with no Wait", "comm.Send(np.ascontiguousarray(y), dest=r + 1)",
              "comm.Isend(np.ascontiguousarray(y), dest=r + 1)", "never completed")],
    "11.1": [("forgets to divide by p", "momentum += mine / p", "momentum += mine")],
    "12.1": [("sends the chunks of the reduce-scatter", "ring.all_gather_chunks(step)", "ring.reduce_scatter_chunks(step)"),
             ("one step too many: right data, wrong clock", "for step in range(ring.size - 1):",
              "for step in range(ring.size):")],
    "13.1": [("ranks do not agree on an overflow", "        comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.MAX)\n", ""),
             ("keeps counting good steps across an overflow", "            self.good_steps = 0\n            return False",
              "            return False")],
    "14.1": [("ZeRO-1 shards the gradients too", "grads = 2 * per_gpu / (dp if zero >= 2 else 1)",
              "grads = 2 * per_gpu / (dp if zero >= 1 else 1)")],
    "15.1": [("tensor parallelism splits all of the 34", "sbh * (10 / split_seq + 24 / t)", "sbh * 34 / t")],
    "16.1": [("torch.save straight onto the checkpoint", None, SAVE_IN_PLACE)],
    "17.1": [("forgets to rescale when the maximum grows", "shrink = np.exp(m - m_new)", "shrink = 1.0"),
             ("Send then Recv around the ring: a deadlock once MPI cannot buffer",
              "comm.Sendrecv(k, dest=(r + 1) % p, recvbuf=k_in, source=(r - 1) % p)",
              "comm.Send(k, dest=(r + 1) % p)\n            comm.Recv(k_in, source=(r - 1) % p)", "was not received within")],
    "18.1": [("puts each received block where it sent one", "recvbuf=recv[frm * b:(frm + 1) * b]",
              "recvbuf=recv[to * b:(to + 1) * b]"),
             ("blocking Send then Recv: a deadlock once MPI cannot buffer",
              "comm.Sendrecv(send[to * b:(to + 1) * b], dest=to, recvbuf=recv[frm * b:(frm + 1) * b], source=frm)",
              "comm.Send(send[to * b:(to + 1) * b], dest=to)\n"
              "        comm.Recv(recv[frm * b:(frm + 1) * b], source=frm)",
              "was not received within"),
             ("hands back the caller's send buffer", "    return recv", "    send[:] = recv\n    return send",
              "The task does not say send buffer may change")],
    "20.1": [("copies a torch tensor instead of working in place", "    if view.flags.writeable:", "    if False:"),
             ("reduces the JAX array's read-only view", "    out = view.copy()", "    out = view")],
    "19.1": [("forgets the broadcast inside the node", "    local.Bcast(buf, root=0)\n", ""),
             ("the library's all-reduce: every rank crosses nodes", None, LIBRARY_ALLREDUCE,
              "is not the leader of its node"),
             ("the node map wrong: rank % ranks_per_node", "color=r // ranks_per_node", "color=r % ranks_per_node",
              "is not the leader of its node")],
}


COMMAND = [sys.executable, "-m", "parallel_lm.exercises"]


def exercises(tmp_path, *args, check=False) -> subprocess.CompletedProcess:
    """``python -m parallel_lm.exercises ARGS --dir TMP_PATH``, output captured."""
    return subprocess.run([*COMMAND, *args, "--dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=400, check=check)


def run_check(exercise, path=None, reference=False, tmp_path=None, timeout=None):
    args = ["check", exercise.id, "--seed", str(SEED)] + (["--reference"] if reference else ["--file", str(path)])
    return exercises(tmp_path, *args, *(["--timeout", str(timeout)] if timeout else []))


def broken_pass_right(tmp_path, name: str, body: str):
    """A file for exercise 01.1 whose pass_right is ``body`` (indented code), and the exercise."""
    exercise = find("01.1")
    path = tmp_path / name
    path.write_text(wrong_source(exercise, None, "\ndef pass_right(buf, comm):\n" + body))
    return exercise, path


def wrong_source(exercise, old, new) -> str:
    """The reference with ``old`` replaced by ``new`` (or several: tuples of each, pairwise), or with ``new``
    appended when ``old`` is None."""
    source = exercise.solution.read_text()
    if old is None:
        return source + "\n" + new  # the later definition replaces the reference's
    for before, after in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        assert source.count(before) == 1, f"{exercise.id}: the mutation's text must occur once in the reference"
        source = source.replace(before, after)
    return source


def test_every_lesson_has_a_graded_exercise_and_a_wrong_solution():
    lessons = sorted(p.name[:2] for p in (ROOT / "lessons").glob("[0-9][0-9]_*.py"))
    assert sorted({e.lesson for e in EXERCISES}) == lessons
    assert sorted(WRONG) == [e.id for e in EXERCISES]


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.id)
def test_the_stub_keeps_the_task_and_empties_every_body(exercise):
    source = exercise.solution.read_text()
    stub = ast.parse(make_stub(source, exercise.id))
    assert ast.get_docstring(stub) == ast.get_docstring(ast.parse(source))
    bodies = [f for f in ast.walk(stub) if isinstance(f, ast.FunctionDef)]
    assert bodies and all(ast.get_docstring(f) for f in bodies)
    assert all(isinstance(f.body[-1], ast.Raise) and len(f.body) == 2 for f in bodies)


def test_every_checker_says_what_it_checks():
    missing = [e.id for e in EXERCISES if len((e.check.__doc__ or "").split()) < 8]
    assert not missing, f"checkers without a docstring that says what they check: {missing}"


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.id)
def test_the_checker_fails_the_stub_and_wrong_solutions_and_passes_the_reference(exercise, tmp_path):
    proc = run_check(exercise, reference=True, tmp_path=tmp_path)
    assert proc.returncode == 0 and f"exercise {exercise.id} PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert " ".join(exercise.check.__doc__.split()[:6]) in " ".join(proc.stdout.split())  # it says what it checks

    start = exercises(tmp_path, "start", exercise.id, check=True)
    stub = tmp_path / exercise.filename
    assert str(stub) in start.stdout
    proc = run_check(exercise, stub, tmp_path=tmp_path)
    assert proc.returncode == 1 and "is not written yet" in proc.stdout, proc.stdout + proc.stderr

    for why, old, new, *says in WRONG[exercise.id]:
        wrong = tmp_path / f"wrong_{exercise.filename}"
        wrong.write_text(wrong_source(exercise, old, new))
        proc = run_check(exercise, wrong, tmp_path=tmp_path)
        assert proc.returncode == 1, f"{why}: passed\n{proc.stdout}{proc.stderr}"
        assert f"exercise {exercise.id} FAILED" in proc.stdout and "FAIL " in proc.stdout, why
        assert all(phrase in proc.stdout for phrase in says), f"{why}: the checker does not say {says}\n{proc.stdout}"
    assert not (tmp_path / ".progress.json").exists()  # nothing passed but the reference, which is not recorded


def test_a_hang_is_called_a_hang_and_the_job_is_killed(tmp_path):
    exercise, deadlock = broken_pass_right(tmp_path, "recv_then_send.py", '''
    p, r = comm.Get_size(), comm.Get_rank()
    out = np.empty_like(buf)
    comm.Recv(out, source=(r - 1) % p)
    comm.Send(buf, dest=(r + 1) % p)
    return out
''')
    proc = run_check(exercise, deadlock, tmp_path=tmp_path, timeout=8)
    assert proc.returncode == 1
    assert "no answer after 8 s on 3 ranks" in proc.stdout, proc.stdout


def test_passes_are_recorded_and_status_shows_progress(tmp_path):
    exercise = find("8")  # short forms: 8 -> 08.1
    mine = tmp_path / exercise.filename
    mine.write_text(exercise.solution.read_text())
    assert run_check(exercise, mine, tmp_path=tmp_path).returncode == 0
    assert json.loads((tmp_path / ".progress.json").read_text())["08.1"]["seed"] == SEED
    status = exercises(tmp_path, "status", check=True).stdout
    assert f"1 of {len(EXERCISES)} exercises passed" in status
    assert "[x] 08.1" in status and "[ ] 01.1" in status and "next: python -m parallel_lm.exercises start 01.1" in status
    listing = exercises(tmp_path, "list", check=True).stdout.splitlines()
    assert [row.split()[0] for row in listing] == [e.id for e in EXERCISES]
    assert listing[7].endswith("passed")


def test_unknown_ids_and_missing_files_say_what_to_do(tmp_path):
    run = lambda *a: exercises(tmp_path, *a)
    proc = run("check", "99.1")
    assert proc.returncode == 2 and "no exercise '99.1'" in proc.stderr
    proc = run("check", "03.1")
    assert proc.returncode == 1 and "run `python -m parallel_lm.exercises start 03.1` first" in proc.stderr
    assert run("start", "03.1").returncode == 0
    proc = run("start", "03.1")
    assert proc.returncode == 1 and "--force" in proc.stderr


def test_an_exception_on_one_rank_is_shown_with_its_line_and_ends_the_job(tmp_path):
    exercise, broken = broken_pass_right(tmp_path, "one_rank_raises.py", '''
    p, r = comm.Get_size(), comm.Get_rank()
    out = np.empty_like(buf)
    if r == 1:
        raise ValueError("rank 1 gives up")
    comm.Sendrecv(buf, dest=(r + 1) % p, recvbuf=out, source=(r - 1) % p)
    return out
''')
    proc = run_check(exercise, broken, tmp_path=tmp_path, timeout=60)
    assert proc.returncode == 1 and "no answer after" not in proc.stdout, proc.stdout  # ended, not timed out
    assert "FAIL rank 1 of 3: ValueError: rank 1 gives up" in proc.stdout, proc.stdout
    assert 'raise ValueError("rank 1 gives up")' in proc.stdout and str(broken) in proc.stdout


def _running(text: str) -> list[int]:
    """Processes whose command line holds ``text``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_ctrl_c_during_a_check_ends_every_rank_too(tmp_path):
    """The ranks run in their own process group (so that a hang can be killed whole): they do not get the
    terminal's Ctrl-C, so check must end them itself."""
    exercise, deadlock = broken_pass_right(tmp_path, "hangs_until_interrupted.py", '''
    import time
    time.sleep(600)
''')
    proc = subprocess.Popen([*COMMAND, "check", exercise.id, "--file", str(deadlock), "--dir", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(_running(str(deadlock))) < 4 and time.time() < deadline:  # check itself and 3 ranks
        time.sleep(0.2)
    assert len(_running(str(deadlock))) >= 4
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    time.sleep(1)
    assert _running(str(deadlock)) == []
