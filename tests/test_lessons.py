"""Every lesson runs under mpiexec, checks itself and says OK (CI runs them all)."""
import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT, describe, mpirun

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
RANKS = {"01": [1, 4], "02": [3, 8], "03": [3, 4], "04": [4], "05": [4], "06": [1, 3], "07": [4], "08": [3],
         "09": [2, 4], "10": [2], "11": [4], "12": [1], "13": [2], "14": [1, 2], "15": [2, 4], "16": [1],
         "17": [2], "18": [4], "19": [4], "20": [2]}

PLOTS = {"05": "05_alpha_beta.png", "07": "07_overlap.png", "10": "10_pipeline_slots.png",  # what --plot draws
         "13": "13_loss_scale.png", "17": "17_causal_work.png", "19": "19_flat_vs_hierarchical.png"}


def test_every_lesson_is_covered():
    assert [p.name[:2] for p in LESSONS] == sorted(RANKS)


@pytest.mark.parametrize("lesson,k", [(p, k) for p in LESSONS for k in RANKS[p.name[:2]]],
                         ids=lambda v: v.name[:2] if hasattr(v, "name") else f"n{v}")
def test_lesson_runs_and_checks_itself(lesson, k, tmp_path):
    figure = PLOTS.get(lesson.name[:2])
    proc = mpirun(k, [str(lesson)] + (["--plot"] if figure else []), timeout=300,
                  env={"PARALLEL_LM_PLOTS": str(tmp_path)})
    assert proc.returncode == 0, describe(proc)
    assert f"lesson {lesson.name[:2]} OK" in proc.stdout, describe(proc)
    assert "CHECK FAILED" not in proc.stderr
    if lesson.name[:2] == "01":  # both parts say how long they took
        assert re.search(rf"one trip of {k} hops?: [\d.]+ us, [\d.]+ us per hop", proc.stdout), proc.stdout
        assert re.search(r"in one Sendrecv: \d+ us on rank 0", proc.stdout), proc.stdout
    if lesson.name[:2] == "09":  # step 1's tensor-parallel time once held the wait for rank 0's reference model
        tp_ms = [float(x) for x in re.findall(r"time in f and g's all-reduces ([\d.]+) ms", proc.stdout)]
        assert len(tp_ms) == 5 and tp_ms[0] < 10 * sorted(tp_ms[1:])[1] + 1, proc.stdout
    if lesson.name[:2] == "15":  # part 3 once timed rank 0 alone, the others spinning, and printed full < none
        assert "4 sequences of 64 tokens" in proc.stdout, proc.stdout
        cost = float(re.search(r"measured ([\d.]+)x here", proc.stdout).group(1))
        assert cost > 1.0, proc.stdout
    if lesson.name[:2] == "16":  # the restart-against-shrink table once had no shrink row under MPICH, unexplained
        assert re.search(r"shrink +[\d.]+ +0 ", proc.stdout) or "shrink   not run: shrinking needs ULFM" in proc.stdout
    if lesson.name[:2] == "17":  # the balanced split, shown whole
        assert "cut into 2K = 4 chunks of 16" in proc.stdout and "rank 0 holds positions 0-15 and 48-63" in proc.stdout
    if lesson.name[:2] == "19":  # "where the advantage ends" must show it ending
        gains = dict(re.findall(r"same as NVLink +(\d+ [MG]iB) .* ([\d.]+)x", proc.stdout))
        assert float(gains["4 GiB"]) < 1.2 < float(gains["64 MiB"]), proc.stdout
    if figure:  # the visual lessons draw their point
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", describe(proc)


def test_every_command_that_runs_a_lesson_uses_the_rank_count_its_docstring_gives():
    """Lesson 10's docstring once said -n 4 where README and docs/lessons.md said -n 2."""
    own = {}
    for lesson in LESSONS:
        m = re.search(r"(?:mpiexec -n (\d+) )?python lessons/" + lesson.name, ast.get_docstring(ast.parse(lesson.read_text())))
        assert m, f"{lesson.name}: its docstring must say how to run it"
        own[lesson.name] = m.group(1)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for k, name in re.findall(r"(?:mpiexec -n (\d+) )?\S*python lessons/(\d\d_\w+\.py)", path.read_text()):
            assert (k or None) == own[name], f"{path.name} runs {name} with -n {k or '(none)'}, its docstring with {own[name]}"


def test_lesson_03_runs_with_empty_and_uneven_chunks():
    """Its exercise 2 (fewer elements than ranks) once raised IndexError on the empty chunk."""
    for elements, last_row in ((3, "{0,1,2,3} {0,1,2,3} {0,1,2,3}         -"),
                               (7, "{0,1,2,3} {0,1,2,3} {0,1,2,3} {0,1,2,3}")):
        proc = mpirun(4, [str(ROOT / "lessons" / "03_ring_allreduce.py"), str(elements)], timeout=120)
        assert proc.returncode == 0 and "lesson 03 OK" in proc.stdout, describe(proc)
        assert proc.stdout.split("\n\n")[-2].splitlines()[-1].endswith(last_row), proc.stdout  # "-": the empty chunk


def test_lesson_05_checks_itself_and_fits_sanely_on_a_busy_machine():
    """Two busy processes share the 2 cores with 4 ranks: its self-check once failed 2 runs in 4 like this."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        proc = mpirun(4, [str(ROOT / "lessons" / "05_alpha_beta_model.py")], timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
    assert proc.returncode == 0 and "lesson 05 OK" in proc.stdout, describe(proc)
    alpha_us, gb_s = (float(x) for x in re.search(r"alpha = ([\d.]+) us \(sizes <= 4K\), beta = [\d.]+ ps/byte "
                                                   r"\(([\d.]+) GB/s", proc.stdout).groups())
    assert alpha_us > 0.5 and 0.1 < gb_s < 100, proc.stdout
    assert "MPI's" not in proc.stdout


def test_torch_tensor_example():
    proc = mpirun(3, [str(ROOT / "examples" / "allreduce_torch_tensor.py"), "--algorithm", "recursive_doubling"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert "mean over 3 ranks = 1.0 (expected 1.0); all ranks agree: True" in proc.stdout, describe(proc)


def test_case_study_example_prices_every_layout_on_both_networks():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "case_study_100_nodes.py")], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for text in ("1. data parallel, ring", "2. groups of 4", "3. PS sync", "4. PS async", "fastest on eth-10g",
                 "fastest on ib-ndr"):
        assert text in proc.stdout, text


def test_every_figure_a_lesson_draws_is_shown_in_docs_lessons_md():
    shown = (ROOT / "docs" / "lessons.md").read_text()
    for figure in PLOTS.values():
        assert f"](../plots/lessons/{figure})" in shown and (ROOT / "plots" / "lessons" / figure).exists(), figure
