"""Checkpoints stay intact: checksummed, written all-or-nothing, damaged ones named, older ones kept and used."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, describe, mpirun
from parallel_lm.services import checkpoint


def save(folder, step, keep=1, value=1.0):
    model = {"w": torch.full((64, 64), value), "b": torch.arange(8.0)}
    return checkpoint.save(folder, model, {"w": {"exp_avg": torch.ones(64, 64)}}, step, {"model": {}}, keep=keep)


def test_a_checkpoint_carries_its_format_step_and_checksum_and_loads_back(tmp_path):
    save(tmp_path, 7)
    state = checkpoint.load(tmp_path)
    assert state["meta"]["format"] == checkpoint.FORMAT and state["meta"]["step"] == 7
    assert state["meta"]["sha256"] == checkpoint.digest(state) and len(state["meta"]["sha256"]) == 64
    assert torch.equal(state["model"]["w"], torch.full((64, 64), 1.0))


def test_a_truncated_file_is_named_with_what_is_wrong(tmp_path):
    path = save(tmp_path, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint.pt is not a readable checkpoint: truncated or corrupted"):
        checkpoint.load(tmp_path)


def test_a_tensor_changed_after_writing_fails_the_checksum(tmp_path):
    path = save(tmp_path, 1)
    state = torch.load(path, weights_only=True)
    state["model"]["w"][3, 5] += 1e-3  # one element, as a bit flip on disk would
    torch.save(state, path)
    with pytest.raises(ValueError, match="checksum mismatch"):
        checkpoint.load(tmp_path)


def test_a_foreign_file_is_named_as_such(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a parallel_lm checkpoint .* a foreign file"):
        checkpoint.load(tmp_path)
    torch.save({"model": {}, "config": {}, "step": 1, "meta": {"format": "other"}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not parallel_lm's"):
        checkpoint.load(tmp_path)


def test_keep_checkpoints_keeps_the_newest_k_and_links_the_newest(tmp_path):
    for step in (2, 4, 6, 8, 10):
        save(tmp_path, step, keep=3, value=step)
    kept = checkpoint.numbered_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["checkpoint-00000010.pt", "checkpoint-00000008.pt", "checkpoint-00000006.pt"]
    assert (tmp_path / "checkpoint.pt").samefile(kept[0]) and checkpoint.load(tmp_path)["step"] == 10


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one_and_says_so(tmp_path):
    for step in (2, 4):
        save(tmp_path, step, keep=2, value=step)
    newest = tmp_path / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # the link and checkpoint-00000004.pt: one file
    heard = []
    state = checkpoint.load(tmp_path, on_fallback=heard.append)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.full((64, 64), 2.0))
    assert len(heard) == 1 and "truncated or corrupted" in heard[0] and "checkpoint-00000002.pt (step 2)" in heard[0]
    with pytest.raises(ValueError, match="truncated or corrupted"):  # a file path: that file or nothing
        checkpoint.load(newest)


KILLED_MID_WRITE = """
import os, sys, torch
from parallel_lm.services import checkpoint
os.replace = lambda *a: os._exit(9)  # killed after the bytes are written, before the rename
checkpoint.save(sys.argv[1], {"w": torch.zeros(4)}, {}, 99, {"model": {}})
"""


def test_a_kill_during_a_write_leaves_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path):
    save(tmp_path, 5)
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], cwd=ROOT, check=False)
    assert proc.returncode == 9
    assert list(tmp_path.glob(".checkpoint.pt.tmp*")), "the half-done write stays under its temporary name"
    assert checkpoint.load(tmp_path)["step"] == 5
    save(tmp_path, 6)
    assert not list(tmp_path.glob(".checkpoint.pt.tmp*")) and checkpoint.load(tmp_path)["step"] == 6


FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from parallel_lm.services import checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # a checkpoint of 64 KiB cannot fit
try:
    checkpoint.save(sys.argv[1], {"w": torch.zeros(128, 128)}, {}, 99, {"model": {}})
except OSError as e:
    print(e)
    sys.exit(3)
"""


def test_a_refused_write_is_reported_with_its_reason_and_the_previous_checkpoint_survives(tmp_path):
    save(tmp_path, 5)
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "cannot write checkpoint" in proc.stdout and "EFBIG" in proc.stdout and "untouched" in proc.stdout
    assert checkpoint.load(tmp_path)["step"] == 5 and not list(tmp_path.glob(".checkpoint.pt.tmp*"))


def test_a_full_disk_is_reported_as_such(tmp_path):
    """A 64 KiB tmpfs (needs the right to mount: root in a container; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                      check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        checkpoint.save(disk, {"w": torch.zeros(8)}, {}, 1, {"model": {}})
        with pytest.raises(OSError, match=r"ENOSPC.*\(the disk is full\); the previous checkpoint"):
            checkpoint.save(disk, {"w": torch.zeros(64, 1024)}, {}, 2, {"model": {}})
        assert checkpoint.load(disk)["step"] == 1 and not list(disk.glob(".checkpoint.pt.tmp*"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_resume_falls_back_to_an_intact_checkpoint_and_trains_what_the_unbroken_run_trained(tmp_path):
    args = ["-m", "parallel_lm.train", "--steps", "4", "--eval-every", "0", "--quiet", "--data", "synthetic",
            "--ckpt-every", "2", "--keep-checkpoints", "2"]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    assert mpirun(2, args + ["--out", str(unbroken)], timeout=120).returncode == 0
    assert mpirun(2, args + ["--out", str(broken)], timeout=120).returncode == 0
    newest = broken / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:4096])
    proc = mpirun(2, ["-m", "parallel_lm.train", "--resume", str(broken), "--steps", "4", "--quiet"], timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.count("resuming from the newest intact checkpoint instead") == 1, describe(proc)
    assert "checkpoint-00000002.pt (step 2)" in proc.stdout and "resumed from" in proc.stdout
    a, b = checkpoint.load(unbroken), checkpoint.load(broken)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # resume is bitwise


def test_generate_falls_back_too(tmp_path):
    args = ["-m", "parallel_lm.train", "--steps", "2", "--eval-every", "0", "--quiet", "--data", "synthetic",
            "--ckpt-every", "1", "--keep-checkpoints", "2", "--out", str(tmp_path)]
    assert mpirun(1, args, timeout=120).returncode == 0
    newest = tmp_path / "checkpoint.pt"
    newest.write_bytes(b"not a checkpoint at all")
    proc = subprocess.run([sys.executable, "-m", "parallel_lm.generate", "--ckpt", str(tmp_path), "--max-new-tokens",
                           "5"], cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ})
    assert proc.returncode == 0 and "checkpoint-00000001.pt (step 1)" in proc.stderr, proc.stderr
