"""The README's commands work as written, for a newcomer in a fresh shell, and what it shows is what the code prints."""
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

README = (ROOT / "README.md").read_text()
VENV = Path(sys.executable).parent  # the venv running this suite: .venv, or .venv-openmpi


def shell(command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` in bash after activating this suite's venv, as the README tells a newcomer to."""
    return subprocess.run(["bash", "-c", f"source {VENV}/activate && {command}"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def commands(prefix: str) -> list[str]:
    """The README's shell lines (``$ `` examples and plain code lines) that start with ``prefix``."""
    found = []
    for block in re.findall(r"```\w*\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.removeprefix("$ ").split("  #")[0].strip()
            if line.startswith(prefix):
                found.append(line)
    return found


def test_the_readme_says_to_activate_the_venv_before_its_first_bare_mpiexec():
    """mpiexec is the MPICH wheel's, inside .venv: a newcomer's shell does not have it on PATH."""
    activate = README.index("source .venv/bin/activate")
    first = min(README.index(line) for line in commands("mpiexec "))
    assert activate < first
    assert shell("command -v mpiexec", ROOT).stdout.strip() == str(VENV / "mpiexec")


def test_the_readme_says_how_to_run_one_test_file():
    line = next(c for c in re.findall(r"`(make test TESTS=[^`]+)`", README))
    target = line.split("TESTS=")[1].strip('"').split()[0]
    assert (ROOT / target).exists(), line
    plan = subprocess.run(["make", "-n", *line.split()[1:2], f"TESTS={target}"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert f"pytest -q {target}" in plan


def test_the_elastic_example_injects_its_fault_every_time_it_is_run(tmp_path):
    """Its fault marker was once a fixed /tmp/once: the second run found it and trained through, 0 restarts."""
    command, = [c for c in commands("rm -rf runs/elastic; PARALLEL_LM_FAIL_AT=") if "parallel_lm.elastic" in c]
    for attempt in (1, 2):
        proc = shell(command, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "[elastic] done: 1 restart(s)" in proc.stdout, (attempt, proc.stdout[-3000:])
        assert re.search(r"ended with exit \d+ after step 12; restarting on 3 rank\(s\) from step 10", proc.stdout)


def test_the_model_lines_the_readme_shows_are_what_train_prints():
    from parallel_lm.model.config import GPTConfig
    shown = re.findall(r"^model: .*?, (GPTConfig\(.*\))$", README, re.M)
    assert shown
    for text in shown:
        fields = dict(re.findall(r"(\w+)='?([\w.]+)", text))  # a string field is quoted: arch='llama'
        assert str(GPTConfig(**{k: type(getattr(GPTConfig(), k))(v) for k, v in fields.items()})) == text


def test_the_table_of_refused_combinations_is_one_table_and_names_every_refused_flag():
    section = README[README.index("### Which flags combine"):README.index("## Experts")]
    rows = [i for i, line in enumerate(section.splitlines()) if line.startswith("|")]
    assert rows == list(range(rows[0], rows[-1] + 1)), "a blank line splits the table: its last rows render as text"
    for flag in ("--sync ps", "--engine torch-ddp", "--zero", "--virtual-stages", "--n-experts", "--ep", "--cp"):
        assert flag in section, flag


def test_the_course_points_only_at_sections_that_exist():
    course = (ROOT / "docs" / "course.md").read_text()
    for doc, title in re.findall(r"\(([\w/.]*\.md|README), \"([^\"]+)\"\)", course):
        target = README if doc == "README" else (ROOT / "docs" / Path(doc).name).read_text()
        assert re.search(rf"^#+ {re.escape(title)}$", target, re.M), (doc, title)
    for doc, anchor in re.findall(r"\]\(([\w.]+\.md)#([\w-]+)\)", course):
        headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / doc).read_text(), re.M)
        assert anchor in {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}, anchor


def test_what_a_learner_writes_and_plots_stays_out_of_git():
    paths = ["my_exercises/ex03_1_ring_allreduce.py", "plots/runs.png", "plots/runs.svg"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == paths
