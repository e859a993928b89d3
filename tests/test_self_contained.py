"""The repository cites only itself: every docs/*.md a file names exists, and nothing points outside."""
import re
import subprocess

from conftest import ROOT


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".toml", ".cfg", ".txt")) or n == "Makefile"]


def test_every_cited_doc_exists_and_nothing_cites_a_file_outside_the_repository():
    missing, outside = [], []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        missing += [f"{path.name}: {m}" for m in set(re.findall(r"docs/[\w.-]+\.md", text)) if not (ROOT / m).is_file()]
        outside += [f"{path.name}: {m}" for m in set(re.findall(r"MPI-NOTES\.md|\.\./shared/", text))]
    assert not missing, missing
    assert not outside, outside
